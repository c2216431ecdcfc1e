"""Verified ingest: stage, verify, store with DVC, audit.

A dataset enters ``data/<name>/`` only when its bundle verifies against a
non-revoked supplier key, every staged file matches the signed hashes (each
byte hashed once), the signed manifest agrees with the files, its name is
the one asked for, and it is not older than the last accepted version of
that name (unless an operator allows it, which is audited). Anything
refused leaves the workspace as it was.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aegis import storage, vcs
from aegis.crypto.bundle import compare_digests, hash_directory, read_bundle_key_id
from aegis.crypto.signing import KeyIdentity, verify_bundle
from aegis.crypto.truststore import TrustEntry
from aegis.data.manifest import (
    BUNDLE_NAME,
    MANIFEST_NAME,
    DatasetManifest,
    check_dataset_name,
    dataset_digest,
    parse_manifest,
)
from aegis.data.sources import StagedSource, stage_source
from aegis.errors import RefusedError
from aegis.fileutil import ensure_dir, read_regular
from aegis.ledger import Action, Ledger
from aegis.pipeline.layout import Layout
from aegis.retry import retry_io
from aegis.timeutil import parse_utc
from aegis.workspace import Workspace

# How far a supplier's clock may run ahead of the pipeline's.
CLOCK_SKEW = timedelta(hours=1)


@dataclass(frozen=True)
class VerifiedDataset:
    """A staged dataset whose signature, files and manifest all checked out."""

    name: str
    digest: str
    manifest: DatasetManifest
    supplier_name: str
    supplier_owner: str
    supplier_key_id: str
    directory: Path
    files: int
    bytes: int
    source: str


@dataclass(frozen=True)
class IngestResult:
    """What ingest stored and recorded."""

    name: str
    digest: str
    created: str
    supplier: str
    supplier_owner: str
    actor: str
    dvc_md5: str
    commit: str
    files: int
    bytes: int
    rows: int
    allowed_older: bool
    audit_seq: int


@contextlib.contextmanager
def staging_area(ws: Workspace) -> Iterator[Path]:
    """A fresh, empty staging directory, removed afterwards whatever happens."""
    path = ensure_dir(ws.root, ws.staging_dir / uuid.uuid4().hex)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stage(ws: Workspace, source: str, staging: Path) -> StagedSource:
    """Copies ``source`` into the (emptied) ``staging`` directory: the I/O step."""
    for child in staging.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return stage_source(source, staging, ws.params().ingest)


def verify_staged(ledger: Ledger, staged: StagedSource, *, name: str) -> VerifiedDataset:
    """Verifies a staged dataset against the trust store.

    Raises:
        RefusedError: The first failed check (``bundle``, ``signer``,
            ``signature``, ``file-set``, ``integrity``, ``manifest``, ``name``,
            ``schema``).
    """
    directory = staged.directory
    bundle = directory / BUNDLE_NAME
    if not bundle.is_file():
        raise RefusedError("bundle", f"no signature bundle '{BUNDLE_NAME}' in the dataset")
    key_id = read_bundle_key_id(bundle)
    supplier = ledger.trust.require_signer(key_id, role="supplier", what="dataset", new=False)
    signed = verify_bundle(bundle, expected=KeyIdentity(supplier.public_key))
    actual = hash_directory(directory, ignored=[BUNDLE_NAME])
    compare_digests(signed.files, actual)

    manifest, raw = parse_manifest(directory / MANIFEST_NAME)
    if manifest.supplier_key_id != key_id:
        raise RefusedError("manifest", "manifest names a different supplier key than the signer")
    listed = {f.path: f for f in manifest.files}
    if set(listed) | {MANIFEST_NAME} != set(signed.files):
        raise RefusedError("manifest", "manifest's file list differs from the signed files")
    for path, entry in listed.items():
        if entry.sha256 != signed.files[path]:
            raise RefusedError(
                "manifest", f"manifest's SHA-256 of '{path}' differs from the signature"
            )
        if entry.bytes != (directory / path).stat().st_size:
            raise RefusedError("manifest", f"manifest's size of '{path}' is wrong")
        check_parquet(directory / path, rows=entry.rows, columns=manifest.columns)
    if manifest.name != name:
        raise RefusedError("name", f"dataset is named '{manifest.name}', not '{name}'")
    digest = dataset_digest(raw)
    if ledger.accepted(digest) is None:
        _check_new(manifest, supplier)
    return VerifiedDataset(
        name=name,
        digest=digest,
        manifest=manifest,
        supplier_name=supplier.name,
        supplier_owner=supplier.owner,
        supplier_key_id=supplier.key_id,
        directory=directory,
        files=len(listed),
        bytes=staged.bytes,
        source=staged.source,
    )


def check_parquet(path: Path, *, rows: int, columns) -> None:
    """Refuses a Parquet file whose row count or schema the pipeline cannot take.

    A signed file can still be hostile: duplicate column names, or nested
    (list, struct, map) columns no stage reads, crash pandas and Great
    Expectations later; they are refused here, before anything is stored.

    Raises:
        RefusedError: ``manifest`` (not Parquet, other rows or columns than the
            manifest says) or ``schema`` (duplicate or nested columns).
    """
    import pyarrow.parquet as pq
    import pyarrow.types as pat

    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except Exception:  # pyarrow raises several types for a non-Parquet file
        raise RefusedError("manifest", f"'{path.name}' is not a Parquet file") from None
    if meta.num_rows != rows:
        raise RefusedError(
            "manifest", f"'{path.name}' holds {meta.num_rows} rows, manifest says {rows}"
        )
    names = list(schema.names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RefusedError("schema", f"'{path.name}' has duplicate column names {duplicates[:5]}")
    nested = [f.name for f in schema if pat.is_nested(f.type)]
    if nested:
        raise RefusedError(
            "schema", f"'{path.name}' has nested columns {nested[:5]} (only flat columns)"
        )
    if names != [c.name for c in columns] or [str(f.type) for f in schema] != [
        c.type for c in columns
    ]:
        raise RefusedError(
            "manifest", f"'{path.name}': its columns or types differ from the manifest's"
        )


def _check_new(manifest: DatasetManifest, supplier: TrustEntry) -> None:
    """What only a dataset not accepted before must pass: a current key, a sane clock.

    A retired supplier's old versions stay verifiable, but it signs nothing new
    (a key is retired because it should no longer be used). A ``created`` far
    ahead would make every honest later version look "older" and be refused.

    Raises:
        RefusedError: ``signer`` (retired supplier) or ``manifest`` (created in the future).
    """
    if supplier.status == "retired":
        raise RefusedError(
            "signer",
            f"dataset: supplier key '{supplier.name}' is retired; it signs no new versions "
            "(only those accepted before it was retired stay valid)",
        )
    ahead = parse_utc(manifest.created) - datetime.now(UTC)
    if ahead > CLOCK_SKEW:
        raise RefusedError(
            "manifest",
            f"{MANIFEST_NAME}: created {manifest.created} is in the future (the supplier's "
            f"clock is {ahead} ahead; at most {CLOCK_SKEW} is allowed)",
        )


def store(
    ledger: Ledger,
    verified: VerifiedDataset,
    *,
    actor: str,
    allow_older: bool = False,
    trigger: dict[str, Any] | None = None,
) -> IngestResult:
    """Moves a verified dataset to ``data/<name>/``, ``dvc add``s it, commits, audits.

    The replay check runs here, under the workspace lock, so two concurrent
    ingests cannot both pass it. A failure restores the previous version.
    ``trigger`` (what started the run: :class:`aegis.triggers.record.Trigger`)
    goes into the audit entry.

    Raises:
        RefusedError: ``replay``: older than the last accepted version;
            ``supplier-reputation``: the supplier's screened rows are over the limit.
    """
    ws = ledger.ws
    layout = Layout.of(ws)
    name = verified.name
    target = layout.data(name)
    dvc_file = layout.data_dvc(name)
    with ledger.locked():
        from aegis.data.reputation import check_supplier

        check_supplier(ledger, verified.supplier_name)
        last = ledger.last_accepted(name)
        older = last is not None and verified.manifest.created < last.created
        if older and not allow_older:
            raise RefusedError(
                "replay",
                f"dataset created {verified.manifest.created} is older than the last accepted "
                f"version of '{name}' ({last.created}); --allow-older accepts it deliberately",
            )
        layout.ensure_dir(target.parent)
        previous = target.with_name(f".{name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            target.rename(previous)
        try:
            shutil.move(str(verified.directory), target)
            vcs.dvc(ws.root, "add", "-q", f"data/{name}")
            md5 = _dvc_md5(ws.root / dvc_file)
            commit = ledger.commit(
                f"ingest {name} {verified.digest}\n\nsupplier: {verified.supplier_name}"
                f" ({verified.supplier_owner})\ncreated: {verified.manifest.created}",
                [dvc_file, "data/.gitignore"],
            )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            if previous.exists():
                previous.rename(target)
            vcs.git(ws.root, "checkout", "-q", "--", dvc_file, "data/.gitignore", check=False)
            raise
        shutil.rmtree(previous, ignore_errors=True)
        entry = ledger.append(
            Action.INGEST_ACCEPTED,
            actor=actor,
            subjects={"dataset": verified.digest},
            details={
                "name": name,
                "created": verified.manifest.created,
                "supplier": verified.supplier_name,
                "supplier_owner": verified.supplier_owner,
                "supplier_key_id": verified.supplier_key_id,
                "dvc_md5": md5,
                "commit": commit,
                "files": verified.files,
                "bytes": verified.bytes,
                "rows": verified.manifest.rows,
                "source": verified.source,
                "allowed_older": older,
                **({"trigger": trigger} if trigger else {}),
            },
        )
    return IngestResult(
        name=name,
        digest=verified.digest,
        created=verified.manifest.created,
        supplier=verified.supplier_name,
        supplier_owner=verified.supplier_owner,
        actor=actor,
        dvc_md5=md5,
        commit=commit,
        files=verified.files,
        bytes=verified.bytes,
        rows=verified.manifest.rows,
        allowed_older=older,
        audit_seq=entry.seq,
    )


def _dvc_md5(dvc_file: Path) -> str:
    from aegis.yamlio import load_yaml

    data = load_yaml(read_regular(dvc_file, what=dvc_file.name).decode())
    return str(data["outs"][0]["md5"])


def push(ws: Workspace, name: str) -> None:
    """Pushes ``data/<name>`` to the DVC remote, encrypted at rest on S3.

    Raises:
        TransientIOError: The push failed (retried by callers).
        RefusedError: ``sse``: the remote did not store it as ``storage`` asks.
    """
    storage.push(ws, Layout.of(ws).data_dvc(name))


def ingest(
    ledger: Ledger,
    source: str,
    *,
    name: str,
    actor: str,
    allow_older: bool = False,
    on_retry=None,
) -> IngestResult:
    """Stages, verifies, stores and pushes one dataset (the whole of ``aegis ingest``)."""
    ws = ledger.ws
    check_dataset_name(name)
    params = ws.params().ingest
    with staging_area(ws) as staging:
        staged = retry_io(
            lambda: stage(ws, source, staging),
            retries=params.io_retries,
            delay_s=params.io_retry_delay_s,
            on_retry=on_retry,
        )
        verified = verify_staged(ledger, staged, name=name)
        result = store(ledger, verified, actor=actor, allow_older=allow_older)
    retry_io(
        lambda: push(ws, name),
        retries=params.io_retries,
        delay_s=params.io_retry_delay_s,
        on_retry=on_retry,
    )
    return result
