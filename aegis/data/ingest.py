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
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from aegis import vcs
from aegis.crypto.bundle import (
    compare_digests,
    hash_directory,
    read_bundle_key_id,
    verify_signed_digests,
)
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
from aegis.retry import retry_io
from aegis.workspace import Workspace


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
    ws.staging_dir.mkdir(parents=True, exist_ok=True)
    path = ws.staging_dir / uuid.uuid4().hex
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stage(ws: Workspace, source: str, staging: Path) -> StagedSource:
    """Copies ``source`` into the (emptied) ``staging`` directory: the I/O step."""
    for child in staging.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return stage_source(source, staging, ws.params().ingest)


def verify_staged(ws: Workspace, staged: StagedSource, *, name: str) -> VerifiedDataset:
    """Verifies a staged dataset against the trust store.

    Raises:
        RefusedError: The first failed check (``bundle``, ``signer``,
            ``signature``, ``file-set``, ``integrity``, ``manifest``, ``name``).
    """
    directory = staged.directory
    bundle = directory / BUNDLE_NAME
    if not bundle.is_file():
        raise RefusedError("bundle", f"no signature bundle '{BUNDLE_NAME}' in the dataset")
    key_id = read_bundle_key_id(bundle)
    supplier = ws.trust().require_signer(key_id, role="supplier", what="dataset", new=False)
    ws.staging_dir.mkdir(parents=True, exist_ok=True)  # git-ignored: absent in a fresh clone
    with tempfile.NamedTemporaryFile("w", suffix=".pub", dir=ws.staging_dir) as pub:
        pub.write(supplier.public_key)
        pub.flush()
        signed = verify_signed_digests(bundle, public_key_path=Path(pub.name))
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
        _check_parquet_rows(directory / path, entry.rows)
    if manifest.name != name:
        raise RefusedError("name", f"dataset is named '{manifest.name}', not '{name}'")
    return VerifiedDataset(
        name=name,
        digest=dataset_digest(raw),
        manifest=manifest,
        supplier_name=supplier.name,
        supplier_owner=supplier.owner,
        supplier_key_id=supplier.key_id,
        directory=directory,
        files=len(listed),
        bytes=staged.bytes,
        source=staged.source,
    )


def _check_parquet_rows(path: Path, rows: int) -> None:
    import pyarrow.parquet as pq

    try:
        actual = pq.ParquetFile(path).metadata.num_rows
    except Exception:  # pyarrow raises several types for a non-Parquet file
        raise RefusedError("manifest", f"'{path.name}' is not a Parquet file") from None
    if actual != rows:
        raise RefusedError("manifest", f"'{path.name}' holds {actual} rows, manifest says {rows}")


def last_accepted_created(ws: Workspace, name: str) -> str | None:
    """Creation time of the last accepted version of ``name``, from the verified audit log."""
    ws.verify_audit()
    for entry in reversed(ws.audit().entries()):
        if entry.action == "ingest.accepted" and entry.details.get("name") == name:
            return str(entry.details["created"])
    return None


def store(
    ws: Workspace, verified: VerifiedDataset, *, actor: str, allow_older: bool = False
) -> IngestResult:
    """Moves a verified dataset to ``data/<name>/``, ``dvc add``s it, commits, audits.

    The replay check runs here, under the workspace lock, so two concurrent
    ingests cannot both pass it. A failure restores the previous version.

    Raises:
        RefusedError: ``replay``: older than the last accepted version.
    """
    name = verified.name
    target = ws.data_dir / name
    dvc_file = f"data/{name}.dvc"
    with ws.lock():
        last = last_accepted_created(ws, name)
        older = last is not None and verified.manifest.created < last
        if older and not allow_older:
            raise RefusedError(
                "replay",
                f"dataset created {verified.manifest.created} is older than the last accepted "
                f"version of '{name}' ({last}); --allow-older accepts it deliberately",
            )
        previous = target.with_name(f".{name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            target.rename(previous)
        try:
            shutil.move(str(verified.directory), target)
            vcs.dvc(ws.root, "add", "-q", f"data/{name}")
            md5 = _dvc_md5(ws.root / dvc_file)
            commit = vcs.commit_paths(
                ws.root,
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
        entry = ws.audit().append(
            actor=actor,
            action="ingest.accepted",
            pipeline_key=ws.pipeline_key(),
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
    data = yaml.safe_load(dvc_file.read_text())
    return str(data["outs"][0]["md5"])


def push(ws: Workspace, name: str) -> None:
    """Pushes ``data/<name>`` to the DVC remote (I/O: raises TransientIOError)."""
    vcs.dvc(ws.root, "push", "-q", f"data/{name}.dvc", io=True)


def ingest(
    ws: Workspace,
    source: str,
    *,
    name: str,
    actor: str,
    allow_older: bool = False,
    on_retry=None,
) -> IngestResult:
    """Stages, verifies, stores and pushes one dataset (the whole of ``aegis ingest``)."""
    check_dataset_name(name)
    params = ws.params().ingest
    with staging_area(ws) as staging:
        staged = retry_io(
            lambda: stage(ws, source, staging),
            retries=params.io_retries,
            delay_s=params.io_retry_delay_s,
            on_retry=on_retry,
        )
        verified = verify_staged(ws, staged, name=name)
        result = store(ws, verified, actor=actor, allow_older=allow_older)
    retry_io(
        lambda: push(ws, name),
        retries=params.io_retries,
        delay_s=params.io_retry_delay_s,
        on_retry=on_retry,
    )
    return result
