"""Verifying a release before anything uses it: the only way product code gets a model.

``verify_release`` runs every check in order and refuses with the first that
fails, naming it:

- ``bundle``: ``release.sig`` is missing, truncated or names no signer;
- ``signer``: the signing key is not a trusted pipeline key (unknown, another
  role, or revoked; a retired key's past releases still verify), or, for a
  Sigstore bundle, ``sign.method`` is not ``sigstore``;
- ``signature``: the bundle's signature does not verify;
- ``file-set``: a signed file is missing, or a file is not in the signature;
- ``integrity``: a file's bytes differ from its signed SHA-256, or the
  signed ``release.json`` and the model files disagree;
- ``identity``: ``release.json`` names another model or version than its
  path or the requested target (a swapped directory);
- ``registry``: the evidence digest differs from the one audited when the
  release was built (``release.created``), or that release was aborted;
- ``freshness``: the audit head the release recorded is not in the log (an
  older copy of the log was restored);
- ``dataset``: the dataset was never accepted by ingest;
- ``supplier``: the dataset's supplier key is revoked since (revocation means
  nothing it signed verifies any more, so neither does a model trained on it).

Each file verification reads (``release.json``, ``metrics.json``, the model
files) is read once, its bytes checked against the signed SHA-256, and those
same bytes parsed: nothing is hashed first and read again afterwards. Code
that needs another file of a verified release reads it with
:func:`read_verified`, which checks it against the signature again.

A release held in memory (a sealed export, decrypted: :mod:`aegis.registry.seal`) is
verified by :func:`verify_release_contents` with the same checks, each file's hash
taken from its bytes; its :class:`VerifiedRelease` keeps those bytes, and
:func:`read_verified` and :func:`load_release_model` read them, never a file.

Sigstore releases: the expected signer identity and OIDC issuer come from
``params.yaml`` (``sign.identity``, ``sign.oidc_issuer``). The trust store
holds keys only, not Sigstore identities, so it cannot vouch for (or revoke)
a Sigstore identity: whoever can edit ``params.yaml`` chooses which identity
is trusted. This is a known limitation of keyless mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis import vcs
from aegis.config import Params
from aegis.crypto.bundle import compare_digests, hash_directory
from aegis.crypto.signing import (
    KeyIdentity,
    SigstoreIdentity,
    bundle_kind,
    require_sigstore_identity,
    verify_bundle,
)
from aegis.errors import (
    AegisError,
    ConfigError,
    FreshnessError,
    RefusedError,
    TransientIOError,
    UnsafeFileError,
    UsageError,
)
from aegis.fileutil import json_object, read_regular
from aegis.ledger import Ledger
from aegis.pipeline.layout import Layout
from aegis.registry.release import BUNDLE, FORMAT, RELEASE_JSON, evidence_digest
from aegis.registry.targets import Target, version_number
from aegis.train.digest import MODEL_LIMIT


@dataclass(frozen=True)
class VerifiedRelease:
    """A release whose signature, signer, files, identity and audit trail all checked out."""

    model_name: str
    version: str  # "v3.0.0"
    directory: Path  # absolute
    model_digest: str
    evidence_digest: str
    dataset_digest: str
    signer_key_id: str  # for Sigstore: the certificate identity
    signer_owner: str
    metrics: dict[str, Any] = field(default_factory=dict)
    release: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # the signed {file: sha256}
    # a release verified in memory (a decrypted sealed export): its files' bytes, read
    # instead of ``directory`` (which is then the export's directory)
    contents: Mapping[str, bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def target(self) -> Target:
        return Target(model=self.model_name, version=self.version)

    def __str__(self) -> str:
        return f"{self.model_name}@{self.version}"


def expected_signer(
    ledger: Ledger, bundle: Path
) -> tuple[KeyIdentity | SigstoreIdentity, str, str]:
    """Who must have signed ``bundle``: a trusted pipeline key, or the configured identity.

    Returns:
        The identity to verify against, the signer's id and its owner.

    Raises:
        RefusedError: ``bundle`` or ``signer``.
        ConfigError: A Sigstore bundle, and ``sign`` lacks its identity or issuer.
    """
    kind, key_id = bundle_kind(bundle)
    if kind == "sigstore":
        sign = ledger.ws.params().sign
        if sign.method != "sigstore":
            raise RefusedError(
                "signer", "release is signed with Sigstore, but sign.method is 'key' (pipeline key)"
            )
        identity, issuer = require_sigstore_identity(sign.identity, sign.oidc_issuer)
        return SigstoreIdentity(identity, issuer, sign.use_staging), identity, issuer
    entry = ledger.trust.require_signer(str(key_id), role="pipeline", what="release", new=False)
    return KeyIdentity(entry.public_key), entry.key_id, entry.owner


def _read_signed(source: Path | Mapping[str, bytes], files: dict[str, str], name: str) -> bytes:
    """The bytes of ``name`` (a file under ``source``, or held in it), checked against the
    signed SHA-256; a file is read once.

    Raises:
        RefusedError: ``file-set`` (not signed, missing, unreadable or not a
            regular file) or ``integrity`` (the bytes differ from the signature).
    """
    rel = Path(name)
    if name not in files or rel.is_absolute() or ".." in rel.parts:
        raise RefusedError("file-set", f"'{name}' is not a file of the signed release")
    if isinstance(source, Mapping):
        data = source.get(name)
        if data is None:
            raise RefusedError("file-set", f"signed file '{name}' is missing")
    else:
        try:
            data = read_regular(source / rel, limit=MODEL_LIMIT, what=name)
        except FileNotFoundError:
            raise RefusedError("file-set", f"signed file '{name}' is missing") from None
        except UnsafeFileError as exc:
            raise RefusedError("file-set", exc.detail) from None
        except OSError as exc:
            raise RefusedError("file-set", f"cannot read '{name}' ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != files[name]:
        raise RefusedError("integrity", f"'{name}' does not match its signed SHA-256")
    return data


def read_verified(verified: VerifiedRelease, name: str) -> bytes:
    """Reads a file of a verified release again, refusing unless it still matches the signature.

    For evidence used after verification (``validation.json``, ``params.yaml``
    ...): the bytes returned are the bytes checked, so use them, not the file.

    Raises:
        RefusedError: ``integrity`` (changed since it was signed) or
            ``file-set`` (not a signed file, missing, or not a regular file).
    """
    if not isinstance(verified, VerifiedRelease):
        raise TypeError("read_verified takes a VerifiedRelease (use open_release)")
    return _read_signed(_source(verified), verified.files, name)


def release_params(verified: VerifiedRelease) -> Params:
    """The release's signed ``params.yaml`` (its serving and monitoring policy go with it).

    Raises:
        ConfigError: The signed params do not parse under this version of Aegis.
    """
    from aegis.config import parse_params
    from aegis.yamlio import YamlRefused, load_yaml

    raw = read_verified(verified, "params.yaml")
    try:
        data = load_yaml(raw.decode("utf-8"))
    except (YamlRefused, UnicodeDecodeError) as exc:
        raise ConfigError(f"{verified}: its signed params.yaml does not parse ({exc})") from None
    return parse_params(data, source=f"{verified} params.yaml")


def _source(verified: VerifiedRelease) -> Path | Mapping[str, bytes]:
    return verified.directory if verified.contents is None else verified.contents


def _check_identity(layout: Layout, directory: Path, info: dict, expect: Target | None) -> None:
    model, version = info.get("model_name"), info.get("version")
    if info.get("format") != FORMAT or not isinstance(model, str) or not isinstance(version, str):
        raise RefusedError("identity", f"'{RELEASE_JSON}' is not an {FORMAT} release")
    if expect is not None and (expect.model, expect.version) != (model, version):
        raise RefusedError(
            "identity", f"directory holds {model}@{version}, not {expect.model}@{expect.version}"
        )
    releases = (layout.root / "releases").resolve()
    if directory.is_relative_to(releases):
        try:
            expected_dir = layout.release(model, version_number(version)).resolve()
        except UsageError:
            raise RefusedError("identity", f"'{RELEASE_JSON}' names version {version!r}") from None
        if directory != expected_dir:
            raise RefusedError(
                "identity",
                f"{directory.relative_to(layout.root)} holds {model}@{version} "
                f"(whose place is {expected_dir.relative_to(layout.root)}): swapped directory",
            )


def _check_audit_trail(ledger: Ledger, info: dict, evidence: str) -> None:
    model, version = info["model_name"], info["version"]
    record = ledger.release(model, version)
    if record is None:
        raise RefusedError("registry", f"no release.created audit entry for {model}@{version}")
    if record.aborted:
        raise RefusedError("registry", f"the release of {model}@{version} was aborted")
    if record.evidence_digest != evidence:
        raise RefusedError(
            "registry",
            f"evidence digest {evidence[:19]} differs from the one audited for "
            f"{model}@{version} ({str(record.evidence_digest)[:19]})",
        )
    head, seq = info.get("audit_head"), info.get("audit_seq")
    if isinstance(head, str) and head:
        known = (
            ledger.holds(seq, head) if isinstance(seq, int) else ledger.find_hash(head) is not None
        )
        if not known:
            raise FreshnessError(
                f"{model}@{version} was built after audit entry {head[:12]}, which the log "
                "does not hold: an older copy of the audit log was restored"
            )


def _check_dataset(ledger: Ledger, dataset: str) -> None:
    accepted = ledger.accepted(dataset)
    if accepted is None:
        raise RefusedError("dataset", f"dataset {dataset[:19]} was never accepted by ingest")
    supplier = ledger.trust.by_key_id(accepted.supplier_key_id)
    if supplier is not None and supplier.status == "revoked":
        raise RefusedError(
            "supplier",
            f"dataset {dataset[:19]} was signed by '{supplier.name}', revoked since "
            f"({supplier.reason or 'no reason given'}): nothing trained on it verifies",
        )


def verify_release(
    ledger: Ledger, directory: Path, *, expect: Target | None = None
) -> VerifiedRelease:
    """Verifies a release directory (see the module docstring for the checks).

    Args:
        ledger: The verified ledger whose trust store and audit log vouch for the release.
        directory: The release directory (absolute or workspace-relative).
        expect: The model and version the caller asked for, if any.

    Returns:
        What the release holds, verified.

    Raises:
        RefusedError: The first failed check.
        UsageError: ``directory`` is not a directory.
    """
    layout = Layout.of(ledger.ws)
    directory = Path(directory)
    directory = (directory if directory.is_absolute() else layout.root / directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a release directory")
    identity, signer_id, signer_owner = expected_signer(ledger, directory / BUNDLE)
    files = verify_bundle(directory / BUNDLE, expected=identity).files
    compare_digests(files, hash_directory(directory, ignored=[BUNDLE]))
    return _verify_signed(
        ledger, layout, directory, files, lambda name: _read_signed(directory, files, name),
        signer=(signer_id, signer_owner), expect=expect,
    )  # fmt: skip


def verify_release_contents(
    ledger: Ledger,
    contents: Mapping[str, bytes],
    *,
    origin: Path,
    expect: Target | None = None,
) -> VerifiedRelease:
    """Verifies a release held in memory (``{relative path: bytes}``, ``release.sig`` included).

    The same checks as :func:`verify_release`, each file hashed from its bytes. The
    plaintext is never written: the one file written is the signature bundle (file
    names and hashes, no content), to a private temporary directory, because
    model_signing reads a bundle from a path.

    Args:
        ledger: The verified ledger.
        contents: Every file of the release.
        origin: Where the bytes came from (a sealed export's directory), for messages
            and the returned ``directory``.
        expect: The model and version the caller asked for, if any.

    Raises:
        RefusedError: The first failed check.
    """
    layout = Layout.of(ledger.ws)
    bundle = contents.get(BUNDLE)
    if bundle is None:
        raise RefusedError("bundle", f"signature bundle '{BUNDLE}' is missing")
    with tempfile.TemporaryDirectory(prefix="aegis-bundle-") as tmp:
        path = Path(tmp) / BUNDLE
        path.write_bytes(bundle)
        identity, signer_id, signer_owner = expected_signer(ledger, path)
        files = verify_bundle(path, expected=identity).files
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    compare_digests(files, {name: h for name, h in hashes.items() if name != BUNDLE})
    return _verify_signed(
        ledger, layout, Path(origin).resolve(), files,
        lambda name: _read_signed(contents, files, name),
        signer=(signer_id, signer_owner), expect=expect, contents=contents,
    )  # fmt: skip


def _verify_signed(
    ledger: Ledger,
    layout: Layout,
    directory: Path,
    files: dict[str, str],
    read: Callable[[str], bytes],
    *,
    signer: tuple[str, str],
    expect: Target | None,
    contents: Mapping[str, bytes] | None = None,
) -> VerifiedRelease:
    """The checks after the signature and the file set: model digest, identity, audit, dataset."""
    from aegis.train.digest import CONFIG, WEIGHTS, digest_of

    # read once, check against the signature, parse the very bytes checked
    info = json_object(read(RELEASE_JSON), check="integrity", what=f"'{RELEASE_JSON}'")
    metrics = json_object(read("metrics.json"), check="integrity", what="'metrics.json'")
    digest = digest_of(read(f"model/{WEIGHTS}"), read(f"model/{CONFIG}"))
    if info.get("model_digest") != digest or metrics.get("model") != digest:
        raise RefusedError(
            "integrity", f"release.json, metrics.json and the model files disagree on {digest[:19]}"
        )
    _check_identity(layout, directory, info, expect)
    evidence = evidence_digest(files)
    _check_audit_trail(ledger, info, evidence)
    dataset = str(info.get("dataset_digest"))
    _check_dataset(ledger, dataset)
    return VerifiedRelease(
        model_name=info["model_name"],
        version=info["version"],
        directory=directory,
        model_digest=digest,
        evidence_digest=evidence,
        dataset_digest=dataset,
        signer_key_id=signer[0],
        signer_owner=signer[1],
        metrics=metrics,
        release=info,
        files=files,
        contents=contents,
    )


def resolve_directory(ledger: Ledger, target: Target) -> tuple[str, Path]:
    """The version a target names and its release directory (not fetched)."""
    from aegis.registry.tags import read_registry

    info = read_registry(ledger, target.model).resolve(target)
    return info.version, Layout.of(ledger.ws).release(target.model, info.number)


def fetch_release(ledger: Ledger, target: Target, directory: Path) -> None:
    """Restores a release directory from the DVC cache, or else the remote.

    Raises:
        RefusedError: ``registry`` (its ``.dvc`` file is missing) or ``fetch``
            (neither the cache nor the remote holds it, or the remote is unreachable:
            a release that cannot be verified is refused either way).
    """
    ws = ledger.ws
    layout = Layout.of(ws)
    dvc_file = directory.with_name(directory.name + ".dvc")
    rel = layout.rel(dvc_file)
    if not dvc_file.is_file():
        raise RefusedError("registry", f"{target}: {rel} is missing from the workspace")
    with contextlib.suppress(AegisError):  # not in the local cache: the remote
        vcs.dvc(ws.root, "checkout", "-q", rel)
    why = ""
    if not directory.is_dir():
        try:
            vcs.dvc(ws.root, "pull", "-q", rel, io=True)
        except TransientIOError as exc:
            why = f" ({exc})"
    if not directory.is_dir():
        raise RefusedError(
            "fetch",
            f"{target}: {layout.rel(directory)} is not in the workspace, the DVC cache or the "
            f"DVC remote{why}",
        )


def open_release(ledger: Ledger, target: Target, *, fetch: bool = True) -> VerifiedRelease:
    """Resolves ``target`` in the registry, fetches its directory if needed, verifies it.

    Args:
        ledger: The verified ledger.
        target: A version or a stage holder.
        fetch: Restore a missing directory from DVC; False for a reader that must not
            write to the workspace (the gateway): a missing directory is then refused.

    Raises:
        RefusedError: ``registry`` (no such version or stage holder), ``fetch``
            (the directory cannot be restored), or any :func:`verify_release` check.
    """
    version, directory = resolve_directory(ledger, target)
    if not directory.is_dir():
        if not fetch:
            raise RefusedError(
                "fetch",
                f"{target.model}@{version}: {Layout.of(ledger.ws).rel(directory)} is not in the "
                f"workspace (`aegis verify {target.model}@{version}` restores it from DVC)",
            )
        fetch_release(ledger, target, directory)
    return verify_release(ledger, directory, expect=Target(model=target.model, version=version))


def load_release_model(verified: VerifiedRelease):
    """Loads the weights of a verified release (``LoadedModel``), re-checking the digest.

    ``load_checkpoint`` reads the weights and config once and computes the
    digest of exactly the bytes it builds the model from; that digest must
    equal the verified one (itself computed from the signed bytes), so the
    model in memory is the signed model. ``metadata.json`` (not in the model
    digest) is checked against its signed SHA-256 too.

    Raises:
        RefusedError: ``integrity``: the files changed since verification.
    """
    from aegis.train.checkpoint import checkpoint_of_bytes, load_checkpoint
    from aegis.train.digest import CONFIG, METADATA, WEIGHTS

    if not isinstance(verified, VerifiedRelease):
        raise TypeError("load_release_model takes a VerifiedRelease (use open_release)")
    if verified.contents is None:
        loaded = load_checkpoint(verified.directory / "model")
    else:  # in memory: the signed bytes themselves, never a file
        raw = {n: read_verified(verified, f"model/{n}") for n in (WEIGHTS, CONFIG, METADATA)}
        loaded = checkpoint_of_bytes(raw, where=f"{verified} (sealed)")
    if loaded.digest != verified.model_digest:
        raise RefusedError("integrity", f"{verified}: model files changed after verification")
    signed_metadata = json_object(
        read_verified(verified, f"model/{METADATA}"), check="integrity", what=f"'{METADATA}'"
    )
    if signed_metadata != loaded.metadata:
        raise RefusedError("integrity", f"{verified}: model/{METADATA} changed after verification")
    return loaded


def open_release_arg(ledger: Ledger, text: str) -> tuple[VerifiedRelease, list[str]]:
    """Verifies the release a target or a directory path names (``aegis verify/export/evaluate``).

    A target is resolved in the registry after interrupted registry changes
    are reconciled; a path is verified as it is.

    Returns:
        The verified release, and what reconciling did.

    Raises:
        UsageError: ``text`` is neither a target nor a path (see ``parse_release_arg``).
        RefusedError: Any verification check.
    """
    from aegis.registry.journal import reconcile
    from aegis.registry.targets import parse_release_arg

    what = parse_release_arg(text)
    if isinstance(what, Target):
        notes = reconcile(ledger)
        return open_release(ledger, what), notes
    return verify_release(ledger, Path.cwd() / what), []


def is_release_path(ledger: Ledger, directory: Path) -> bool:
    """Whether a model directory must be verified as (part of) a release to be used.

    Anything under ``releases/``, or holding a ``release.json`` or ``release.sig``
    (a release whose signature was removed is still a release), is loaded only
    through verification; other directories are plain checkpoints.
    """
    from aegis.registry.release import BUNDLE, RELEASE_JSON

    resolved = directory.resolve()
    releases = (ledger.ws.root / "releases").resolve()
    return (
        resolved.is_relative_to(releases)
        or (resolved / RELEASE_JSON).exists()
        or (resolved / BUNDLE).exists()
    )
