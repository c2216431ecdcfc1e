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
- ``dataset``: the dataset was never accepted by ingest.

Each file verification reads (``release.json``, ``metrics.json``, the model
files) is read once, its bytes checked against the signed SHA-256, and those
same bytes parsed: nothing is hashed first and read again afterwards. Code
that needs another file of a verified release reads it with
:func:`read_verified`, which checks it against the signature again.

Sigstore releases: the expected signer identity and OIDC issuer come from
``params.yaml`` (``sign.identity``, ``sign.oidc_issuer``). The trust store
holds keys only, not Sigstore identities, so it cannot vouch for (or revoke)
a Sigstore identity: whoever can edit ``params.yaml`` chooses which identity
is trusted. This is a known limitation of keyless mode.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis import vcs
from aegis.crypto.bundle import compare_digests, hash_directory, verify_signed_digests
from aegis.errors import RefusedError, UsageError
from aegis.fileutil import json_object
from aegis.registry.release import (
    BUNDLE,
    FORMAT,
    RELEASE_JSON,
    evidence_digest,
    release_dir,
)
from aegis.registry.targets import Target, version_number
from aegis.workspace import Workspace


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

    @property
    def target(self) -> Target:
        return Target(model=self.model_name, version=self.version)

    def __str__(self) -> str:
        return f"{self.model_name}@{self.version}"


def _bundle_kind(bundle: Path) -> tuple[str, str]:
    """("key", key id) or ("sigstore", "") from the unverified bundle.

    Raises:
        RefusedError: ``bundle``.
    """
    from aegis.crypto.bundle import read_bundle_key_id

    try:
        data = json.loads(bundle.read_bytes())
    except FileNotFoundError:
        raise RefusedError("bundle", f"signature bundle '{BUNDLE}' is missing") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise RefusedError("bundle", f"'{BUNDLE}' is not valid JSON (truncated?)") from None
    material = data.get("verificationMaterial") if isinstance(data, dict) else None
    if isinstance(material, dict) and (
        "certificate" in material or "x509CertificateChain" in material
    ):
        return "sigstore", ""
    return "key", read_bundle_key_id(bundle)


def _signed_files(ws: Workspace, bundle: Path) -> tuple[dict[str, str], str, str]:
    """Checks signer and signature; returns the signed digests, signer id and owner."""
    kind, key_id = _bundle_kind(bundle)
    if kind == "sigstore":
        return _sigstore_files(ws, bundle)
    entry = ws.trust().require_signer(key_id, role="pipeline", what="release", new=False)
    ws.staging_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".pub", dir=ws.staging_dir) as pub:
        pub.write(entry.public_key)
        pub.flush()
        signed = verify_signed_digests(bundle, public_key_path=Path(pub.name))
    return signed.files, entry.key_id, entry.owner


def sigstore_verifier(ws: Workspace):
    """model_signing's Sigstore verifier for ``sign.identity`` / ``sign.oidc_issuer``.

    Building it fetches Sigstore's trust root (network).

    Raises:
        RefusedError: ``signer``: ``sign.method`` is not ``sigstore``.
        ConfigError: identity or OIDC issuer not set.
    """
    from model_signing._signing import sign_sigstore

    from aegis.registry.release import require_sigstore_identity

    sign = ws.params().sign
    if sign.method != "sigstore":
        raise RefusedError(
            "signer", "release is signed with Sigstore, but sign.method is 'key' (pipeline key)"
        )
    identity, issuer = require_sigstore_identity(sign)
    return sign_sigstore.Verifier(
        identity=identity, oidc_issuer=issuer, use_staging=sign.use_staging
    )


def _sigstore_files(ws: Workspace, bundle: Path) -> tuple[dict[str, str], str, str]:
    """Verifies a Sigstore bundle for the identity and issuer in ``params.yaml``.

    Limitation: the trust store has no entries for Sigstore identities, so
    no trust-store entry (role, owner, revocation) is required or checked for
    the identity; ``params.yaml`` alone names it.
    """
    from model_signing._signing import sign_sigstore

    verifier = sigstore_verifier(ws)
    identity = str(ws.params().sign.identity)
    try:
        manifest = verifier.verify(sign_sigstore.Signature.read(bundle))
    except Exception as exc:  # sigstore raises many types for a bad bundle or identity
        raise RefusedError(
            "signature", f"'{BUNDLE}' does not verify for {identity} ({type(exc).__name__})"
        ) from None
    files = {str(rd.identifier): rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    return files, identity, str(ws.params().sign.oidc_issuer)


def _read_signed(directory: Path, files: dict[str, str], name: str) -> bytes:
    """The bytes of ``directory/name``, read once and checked against the signed SHA-256.

    Raises:
        RefusedError: ``file-set`` (not signed, missing, unreadable or not a
            regular file) or ``integrity`` (the bytes differ from the signature).
    """
    rel = Path(name)
    if name not in files or rel.is_absolute() or ".." in rel.parts:
        raise RefusedError("file-set", f"'{name}' is not a file of the signed release")
    path = directory / rel
    if path.is_symlink() or not path.is_file():
        raise RefusedError("file-set", f"signed file '{name}' is missing or not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RefusedError("file-set", f"cannot read '{name}' ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != files[name]:
        raise RefusedError("integrity", f"'{name}' does not match its signed SHA-256")
    return data


def read_verified(verified: VerifiedRelease, name: str) -> bytes:
    """Reads a file of a verified release again, refusing unless it still matches the signature.

    For evidence used after verification (``validation.json``, ``params.yaml``
    ...): the bytes returned are the bytes checked, so use them, not the file.

    Args:
        verified: A release :func:`verify_release` returned.
        name: The file's signed name (``"params.yaml"``, ``"model/config.json"``).

    Raises:
        RefusedError: ``integrity`` (changed since it was signed) or
            ``file-set`` (not a signed file, missing, or not a regular file).
    """
    if not isinstance(verified, VerifiedRelease):
        raise TypeError("read_verified takes a VerifiedRelease (use open_release)")
    return _read_signed(verified.directory, verified.files, name)


def _check_identity(ws: Workspace, directory: Path, info: dict, expect: Target | None) -> None:
    model, version = info.get("model_name"), info.get("version")
    if info.get("format") != FORMAT or not isinstance(model, str) or not isinstance(version, str):
        raise RefusedError("identity", f"'{RELEASE_JSON}' is not an {FORMAT} release")
    if expect is not None and (expect.model, expect.version) != (model, version):
        raise RefusedError(
            "identity", f"directory holds {model}@{version}, not {expect.model}@{expect.version}"
        )
    releases = (ws.root / "releases").resolve()
    if directory.is_relative_to(releases):
        expected_dir = release_dir(ws, model, version_number(version)).resolve()
        if directory != expected_dir:
            raise RefusedError(
                "identity",
                f"{directory.relative_to(ws.root)} holds {model}@{version} "
                f"(whose place is {expected_dir.relative_to(ws.root)}): swapped directory",
            )


def verify_release(
    ws: Workspace, directory: Path, *, expect: Target | None = None
) -> VerifiedRelease:
    """Verifies a release directory (see the module docstring for the checks).

    Args:
        ws: The workspace whose trust store and audit log vouch for the release.
        directory: The release directory (absolute or workspace-relative).
        expect: The model and version the caller asked for, if any.

    Returns:
        What the release holds, verified.

    Raises:
        RefusedError: The first failed check.
        UsageError: ``directory`` is not a directory.
    """
    from aegis.train.digest import CONFIG, WEIGHTS, digest_of

    directory = (ws.root / directory if not Path(directory).is_absolute() else directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a release directory")
    files, signer_id, signer_owner = _signed_files(ws, directory / BUNDLE)
    compare_digests(files, hash_directory(directory, ignored=[BUNDLE]))
    # read once, check against the signature, parse the very bytes checked
    info = json_object(
        _read_signed(directory, files, RELEASE_JSON), check="integrity", what=f"'{RELEASE_JSON}'"
    )
    metrics = json_object(
        _read_signed(directory, files, "metrics.json"), check="integrity", what="'metrics.json'"
    )
    digest = digest_of(
        _read_signed(directory, files, f"model/{WEIGHTS}"),
        _read_signed(directory, files, f"model/{CONFIG}"),
    )
    if info.get("model_digest") != digest or metrics.get("model") != digest:
        raise RefusedError(
            "integrity", f"release.json, metrics.json and the model files disagree on {digest[:19]}"
        )
    _check_identity(ws, directory, info, expect)
    model, version = info["model_name"], info["version"]
    evidence = evidence_digest(files)

    ws.verify_audit()
    entries = ws.audit().entries()
    created = [
        e
        for e in entries
        if e.action == "release.created"
        and e.details.get("model_name") == model
        and e.details.get("version") == version
    ]
    if not created:
        raise RefusedError("registry", f"no release.created audit entry for {model}@{version}")
    intent = created[-1].details.get("intent")
    if intent is not None and any(
        e.action == "release.aborted" and e.details.get("intent") == intent for e in entries
    ):
        raise RefusedError("registry", f"the release of {model}@{version} was aborted")
    if created[-1].subjects.get("evidence") != evidence:
        raise RefusedError(
            "registry",
            f"evidence digest {evidence[:19]} differs from the one audited for "
            f"{model}@{version} ({str(created[-1].subjects.get('evidence'))[:19]})",
        )
    dataset = str(info.get("dataset_digest"))
    if not any(
        e.action == "ingest.accepted" and e.subjects.get("dataset") == dataset for e in entries
    ):
        raise RefusedError("dataset", f"dataset {dataset[:19]} was never accepted by ingest")
    return VerifiedRelease(
        model_name=model,
        version=version,
        directory=directory,
        model_digest=digest,
        evidence_digest=evidence,
        dataset_digest=dataset,
        signer_key_id=signer_id,
        signer_owner=signer_owner,
        metrics=metrics,
        release=info,
        files=files,
    )


def resolve_directory(ws: Workspace, target: Target) -> tuple[str, Path]:
    """The version a target names and its release directory (not fetched)."""
    from aegis.registry.tags import read_registry

    info = read_registry(ws, target.model).resolve(target)
    return info.version, release_dir(ws, target.model, info.number)


def open_release(ws: Workspace, target: Target) -> VerifiedRelease:
    """Resolves ``target`` in the registry, fetches its directory if needed, verifies it.

    The directory comes from the DVC cache (``dvc checkout``) or, failing that,
    the remote (``dvc pull``).

    Raises:
        RefusedError: ``registry`` (no such version or stage holder, or its
            ``.dvc`` file is missing), ``fetch`` (DVC ran but the directory is
            still missing), or any :func:`verify_release` check.
        TransientIOError: The DVC remote could not be reached.
    """
    version, directory = resolve_directory(ws, target)
    if not directory.is_dir():
        dvc_file = directory.with_name(directory.name + ".dvc")
        rel = str(dvc_file.relative_to(ws.root))
        if not dvc_file.is_file():
            raise RefusedError("registry", f"{target}: {rel} is missing from the workspace")
        try:
            vcs.dvc(ws.root, "checkout", "-q", rel)
        except Exception:  # not in the local cache: the remote
            vcs.dvc(ws.root, "pull", "-q", rel, io=True)
        if not directory.is_dir():
            vcs.dvc(ws.root, "pull", "-q", rel, io=True)
        if not directory.is_dir():
            raise RefusedError(
                "fetch",
                f"{target}: DVC could not restore {directory.relative_to(ws.root)} "
                "from its cache or remote",
            )
    return verify_release(ws, directory, expect=Target(model=target.model, version=version))


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
    from aegis.train.checkpoint import load_checkpoint
    from aegis.train.digest import METADATA

    if not isinstance(verified, VerifiedRelease):
        raise TypeError("load_release_model takes a VerifiedRelease (use open_release)")
    loaded = load_checkpoint(verified.directory / "model")
    if loaded.digest != verified.model_digest:
        raise RefusedError("integrity", f"{verified}: model files changed after verification")
    signed_metadata = json_object(
        read_verified(verified, f"model/{METADATA}"), check="integrity", what=f"'{METADATA}'"
    )
    if signed_metadata != loaded.metadata:
        raise RefusedError("integrity", f"{verified}: model/{METADATA} changed after verification")
    return loaded
