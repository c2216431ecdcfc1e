"""Sealed exports: a verified release encrypted to serving identities, opened in memory only.

``aegis export TARGET DIR --seal-to ID`` writes, instead of the release's files:

- ``release.tar.age``: the whole signed release directory (every file and
  ``release.sig``) as one tar archive, encrypted with age to every recipient named
  (:mod:`aegis.crypto.sealing`). Nothing of the release is readable without one of
  their private keys: not the weights, not the metrics, not the params.
- ``seal.json``: a label (what is inside, to whom it is sealed, the archive's SHA-256).
  Unsigned and never trusted: what counts is what decrypts and then verifies.
- ``pipeline.pub`` and ``VERIFY.md``: how to open and verify it without Aegis.

Every recipient must be an active X25519 serving identity of the trust store (refused
otherwise: ``seal``). The release signature covers the plaintext and travels inside, so
:func:`open_sealed` decrypts into memory and verifies the bytes with every check of a
registry release (:func:`aegis.registry.verify.verify_release_contents`); it first
refuses an identity that is not an active serving identity of the trust store (a
revoked or retired one included).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from aegis.crypto.sealing import (
    ServingIdentity,
    load_identity,
    normalized_recipient,
    read_recipient_file,
    recipient_key_id,
    seal,
    unseal,
)
from aegis.crypto.signing import BUNDLE_LIMIT
from aegis.crypto.truststore import X25519, TrustEntry, TrustStore
from aegis.errors import RefusedError, UnsafeFileError, UsageError
from aegis.fileutil import atomic_write, read_regular
from aegis.ledger import Ledger
from aegis.registry.release import BUNDLE
from aegis.registry.verify import VerifiedRelease, read_verified, verify_release_contents
from aegis.timeutil import utc_now
from aegis.train.digest import MODEL_LIMIT

ARCHIVE = "release.tar.age"
LABEL = "seal.json"
FORMAT = "aegis-sealed/1"
ARCHIVE_LIMIT = 2 * MODEL_LIMIT
MAX_MEMBERS = 10_000


@dataclass(frozen=True)
class Sealed:
    """A sealed export just written."""

    directory: Path
    recipients: tuple[TrustEntry, ...]
    archive_sha256: str


# -- identities -------------------------------------------------------------------------


def require_identity(store: TrustStore, key_id: str, *, what: str) -> TrustEntry:
    """The active X25519 serving identity ``key_id`` is, or a ``seal`` refusal.

    Raises:
        RefusedError: ``seal``: unknown, not an X25519 serving identity, retired or revoked.
    """
    entry = store.by_key_id(key_id)
    if entry is None:
        raise RefusedError(
            "seal", f"{what} is not in the trust store (an admin adds serving identities: "
            "`aegis keys new --role serving --type x25519`)",
        )  # fmt: skip
    if entry.key_type != X25519 or entry.role != "serving":
        raise RefusedError("seal", f"{what}: '{entry.name}' is not an X25519 serving identity")
    if entry.status != "active":
        why = f" ({entry.reason})" if entry.reason else ""
        raise RefusedError(
            "seal", f"{what}: serving identity '{entry.name}' is {entry.status}{why}"
        )
    return entry


def resolve_recipients(store: TrustStore, specs: Sequence[str]) -> list[TrustEntry]:
    """The trust entries ``--seal-to`` names: recipient files, ``age1...`` strings or entry names.

    A spec that is an existing file is read as a recipient file (``ID.pub``); one
    starting with ``age1`` is a recipient; anything else names a trust entry.

    Raises:
        UsageError: No recipient, an unreadable file, an unknown entry name.
        RefusedError: ``seal``: a recipient that is not an active serving identity.
    """
    if not specs:
        raise UsageError("--seal-to needs at least one serving identity")
    out: dict[str, TrustEntry] = {}
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            recipient = read_recipient_file(path)
        elif spec.strip().lower().startswith("age1"):
            recipient = normalized_recipient(spec)
        else:
            recipient = store.get(spec).public_key  # UsageError when there is no such entry
        entry = require_identity(store, recipient_key_id(recipient), what=f"recipient {spec}")
        out[entry.key_id] = entry
    return list(out.values())


# -- sealing ----------------------------------------------------------------------------


def release_contents(ledger: Ledger, verified: VerifiedRelease) -> dict[str, bytes]:
    """Every file of a verified release as bytes, verified again *as bytes*.

    What is sealed is exactly what verifies: the bundle and each signed file read once,
    then checked together in memory (a file swapped after the first verification is
    caught here, not on the serving host).

    Raises:
        RefusedError: Any verification check.
    """
    try:
        bundle = read_regular(verified.directory / BUNDLE, limit=BUNDLE_LIMIT, what=BUNDLE)
    except (OSError, UnsafeFileError) as exc:
        raise RefusedError("bundle", f"cannot read '{BUNDLE}' ({exc})") from None
    contents = {name: read_verified(verified, name) for name in sorted(verified.files)}
    contents[BUNDLE] = bundle
    verify_release_contents(ledger, contents, origin=verified.directory, expect=verified.target)
    return contents


def pack(contents: dict[str, bytes]) -> bytes:
    """A deterministic tar of ``contents`` (regular files, mode 0644, no owner, time 0)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(contents):
            data = contents[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(data: bytes, *, what: str) -> dict[str, bytes]:
    """The files of a decrypted archive, in memory; anything but plain relative files refused.

    Raises:
        RefusedError: ``seal``: not a tar archive, a link, device or directory entry, an
            absolute or ``..`` path, a name twice, too many members.
    """
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                name = member.name
                parts = PurePosixPath(name).parts
                if not member.isreg():
                    raise RefusedError("seal", f"{what}: '{name[:80]}' is not a regular file")
                if (
                    not parts or name.startswith("/") or ".." in parts or "\\" in name
                    or name != str(PurePosixPath(*parts)) or name in out
                ):  # fmt: skip
                    raise RefusedError("seal", f"{what}: member name {name[:80]!r} refused")
                if len(out) >= MAX_MEMBERS:
                    raise RefusedError("seal", f"{what}: more than {MAX_MEMBERS} files")
                handle = tar.extractfile(member)
                if handle is None:
                    raise RefusedError("seal", f"{what}: '{name[:80]}' has no content")
                out[name] = handle.read()
    except tarfile.TarError as exc:
        raise RefusedError("seal", f"{what}: not a release archive ({exc})") from None
    return out


def write_sealed(
    ledger: Ledger, verified: VerifiedRelease, out_dir: Path, recipients: Sequence[TrustEntry],
    *, readme: str,
) -> Sealed:  # fmt: skip
    """Seals a verified release to ``recipients`` into the (new or empty) ``out_dir``.

    Writes ``release.tar.age``, ``seal.json`` and ``VERIFY.md`` (``readme``); the caller
    adds ``pipeline.pub``.

    Raises:
        RefusedError: ``seal`` (a recipient is not an active serving identity now) or a
            verification check of the bytes sealed.
    """
    recipients = [
        require_identity(ledger.trust, r.key_id, what=f"recipient '{r.name}'") for r in recipients
    ]
    archive = seal(pack(release_contents(ledger, verified)), [r.public_key for r in recipients])
    digest = hashlib.sha256(archive).hexdigest()
    atomic_write(out_dir / ARCHIVE, archive)
    label = {
        "format": FORMAT,
        "release": str(verified),
        "model_digest": verified.model_digest,
        "evidence_digest": verified.evidence_digest,
        "archive": ARCHIVE,
        "archive_sha256": digest,
        "sealed_at": utc_now(),
        "recipients": [
            {"name": r.name, "owner": r.owner, "key_id": r.key_id, "recipient": r.public_key}
            for r in recipients
        ],
    }
    atomic_write(out_dir / LABEL, json.dumps(label, indent=1, sort_keys=True).encode() + b"\n")
    atomic_write(out_dir / "VERIFY.md", readme.encode())
    return Sealed(directory=out_dir, recipients=tuple(recipients), archive_sha256=digest)


def sealed_readme(verified: VerifiedRelease, recipients: Sequence[TrustEntry], command: str) -> str:
    """``VERIFY.md`` of a sealed export: what is encrypted, to whom, how to open it."""
    names = ", ".join(f"`{r.name}` (key id `{r.key_id[:16]}`)" for r in recipients)
    return f"""# {verified.model_name}@{verified.version}, sealed

`{ARCHIVE}` is the signed release directory (every file, `{BUNDLE}` included) as a
tar archive, encrypted with age (X25519) to the serving identities {names}.
Nothing of the release is readable here without one of their private keys.
`{LABEL}` is a label (unsigned): what counts is what decrypts and then verifies.

Serve it with Aegis, which decrypts in memory only and verifies it exactly as it
verifies a registry release (in the workspace the release belongs to):

```
aegis serve THIS_DIRECTORY --identity IDENTITY_FILE --key SERVING_KEY
```

Without Aegis (this writes the plaintext release to DIR: keep it private), in this
directory:

```
mkdir -m 700 DIR && age -d -i IDENTITY_FILE {ARCHIVE} | tar -x -C DIR && cp pipeline.pub DIR/
cd DIR && {command}
```

- model digest: `{verified.model_digest}`
- evidence digest: `{verified.evidence_digest}`
"""


# -- opening ----------------------------------------------------------------------------


def open_sealed(ledger: Ledger, directory: Path, identity_path: Path) -> VerifiedRelease:
    """Decrypts a sealed export in memory with ``identity_path`` and verifies what it holds.

    Nothing is written: the archive is read, decrypted, unpacked and verified in memory
    (:func:`verify_release_contents`); the returned release carries the bytes.

    Raises:
        UsageError: ``directory`` is not a directory; the identity file is unreadable.
        RefusedError: ``seal`` (the identity is not an active serving identity of the
            trust store, the archive is missing, not sealed to it, changed or not a
            release archive), or any verification check of the release inside.
    """
    identity: ServingIdentity = load_identity(identity_path)
    require_identity(ledger.trust, identity.key_id, what=f"identity {identity_path}")
    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a sealed export directory")
    try:
        data = read_regular(directory / ARCHIVE, limit=ARCHIVE_LIMIT, what=ARCHIVE)
    except FileNotFoundError:
        raise RefusedError("seal", f"{directory}: no {ARCHIVE} (not a sealed export)") from None
    except UnsafeFileError as exc:
        raise RefusedError("seal", exc.detail) from None
    except OSError as exc:
        raise RefusedError("seal", f"cannot read {ARCHIVE} ({exc.strerror})") from None
    what = f"{directory.name}/{ARCHIVE}"
    contents = unpack(unseal(data, identity, what=what), what=what)
    del data
    return verify_release_contents(ledger, contents, origin=directory)


def is_sealed_export(directory: Path) -> bool:
    """Whether ``directory`` holds a sealed export's archive."""
    return (Path(directory) / ARCHIVE).is_file()
