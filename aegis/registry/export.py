"""Exporting a verified release for downstream users, who check it without Aegis.

The export is the release directory byte for byte (``release.sig``
included), plus the signer's public key ``pipeline.pub`` and ``VERIFY.md``
with the exact ``model_signing verify`` command. Those two files are not
part of the signature; the command tells model_signing to ignore them and
*not* to ignore git paths (releases are signed with ``ignore_git_paths``
off, so nothing can hide in a ``.git*`` file).

A sealed export (``seal_to``) holds the release encrypted instead of its files:
:mod:`aegis.registry.seal`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aegis.crypto.bundle import compare_digests, hash_directory
from aegis.errors import RefusedError, UsageError
from aegis.ledger import Ledger
from aegis.pipeline.layout import check_output
from aegis.registry.release import BUNDLE
from aegis.registry.seal import resolve_recipients, sealed_readme, write_sealed
from aegis.registry.targets import Target
from aegis.registry.verify import (
    VerifiedRelease,
    open_release,
    open_release_arg,
    verify_release,
)

PUBLIC_KEY = "pipeline.pub"
README = "VERIFY.md"


@dataclass(frozen=True)
class ExportResult:
    """Where a release was exported and how to verify it."""

    release: str  # "digits-model@v1.0.0"
    directory: Path
    files: int
    command: str
    reconciled: tuple[str, ...] = ()  # interrupted registry changes closed first
    sealed_to: tuple[str, ...] = ()  # serving identities (names) of a sealed export


def verify_command(verified: VerifiedRelease) -> str:
    """The model_signing CLI command that verifies the export, run inside its directory."""
    extra = f"--ignore-paths {README} --ignore-paths {PUBLIC_KEY}"
    signer = verified.release.get("signer") or {}
    if signer.get("method") == "sigstore":
        return (
            f"model_signing verify sigstore . --signature {BUNDLE} --no-ignore-git-paths "
            f"{extra} --identity {signer['identity']} "
            f"--identity_provider {signer['oidc_issuer']}"
        )
    return (
        f"model_signing verify key . --signature {BUNDLE} --public_key {PUBLIC_KEY} "
        f"--no-ignore-git-paths {extra}"
    )


def _readme(verified: VerifiedRelease, command: str) -> str:
    sigstore = (verified.release.get("signer") or {}).get("method") == "sigstore"
    key_line = (
        "Signed keylessly with Sigstore by the identity named in the command."
        if sigstore
        else f"`{PUBLIC_KEY}` is the Aegis pipeline key that signed it "
        f"(key id `{verified.signer_key_id}`, owner `{verified.signer_owner}`); "
        "compare the key id with the one your provider publishes."
    )
    return f"""# {verified.model_name}@{verified.version}

Exported by Aegis after verification. Every file here except `{README}` and
`{PUBLIC_KEY}` is covered by the model_signing bundle `{BUNDLE}`.

{key_line}

Verify (needs `pip install model-signing==1.1.1`), in this directory:

```
{command}
```

- model digest: `{verified.model_digest}` (sha256 of model/model.safetensors then
  model/config.json)
- evidence digest: `{verified.evidence_digest}` (sha256 of the canonical JSON
  of the signed file -> sha256 map)
- dataset digest: `{verified.dataset_digest}`

`release.json` names the model, version, dataset, git commit and signer;
`metrics.json`/`report.html` the evaluation, `validation.json` the data
validation, `dataset.json` the dataset's supplier, `sbom.cdx.json` the
CycloneDX SBOM of the environment that built it.
"""


def export_release(
    ledger: Ledger, target: Target | Path | str, out_dir: Path, *, seal_to: Sequence[str] = (),
    checked: bool = False,
) -> ExportResult:  # fmt: skip
    """Verifies a release and copies it, with its public key and instructions, to ``out_dir``.

    Args:
        ledger: The workspace's verified ledger.
        target: A registry target, a release directory, or the argument text naming
            either (``NAME@vN``, ``NAME#prod``, a path with a ``/``); a target is
            resolved after interrupted registry changes are reconciled.
        out_dir: A new or empty directory, not inside a stage output or ``releases/``.
        seal_to: Serving identities (recipient files, ``age1...`` recipients or trust
            entry names): the release is then sealed to them (:mod:`aegis.registry.seal`)
            instead of copied.
        checked: ``out_dir`` is Aegis's own (``.aegis/sealed/...``), already created
            safely: skip the user-path check that refuses ``.aegis/``.

    Raises:
        UsageError: ``out_dir`` exists and is not an empty directory.
        RefusedError: ``path`` (``out_dir`` is where a stage or Aegis writes), the
            release does not verify (any ``verify_release`` check), the copy
            does not match the signature, or ``seal``: a recipient that is not an
            active serving identity.
    """
    ws = ledger.ws
    if not checked:
        out_dir = check_output(ws, out_dir, datasets=ws.params().pipeline.datasets)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir}: exists and is not empty; export into a new directory")
    recipients = resolve_recipients(ledger.trust, seal_to) if seal_to else []
    reconciled: list[str] = []
    if isinstance(target, str):
        verified, reconciled = open_release_arg(ledger, target)
    elif isinstance(target, Target):
        verified = open_release(ledger, target)
    else:
        verified = verify_release(ledger, target)
    if out_dir.is_relative_to(verified.directory) or verified.directory.is_relative_to(out_dir):
        raise UsageError(f"{out_dir}: overlaps the release directory")
    created = not out_dir.exists()
    try:
        command = verify_command(verified)
        if recipients:
            out_dir.mkdir(exist_ok=True)
            write_sealed(
                ledger, verified, out_dir, recipients,
                readme=sealed_readme(verified, recipients, command),
            )  # fmt: skip
        else:
            shutil.copytree(verified.directory, out_dir, symlinks=True, dirs_exist_ok=True)
            copied = hash_directory(out_dir, ignored=[BUNDLE])
            try:
                compare_digests(verified.files, copied)
            except RefusedError as exc:
                raise RefusedError(exc.check, f"the exported copy: {exc.detail}") from None
        if (verified.release.get("signer") or {}).get("method") != "sigstore":
            entry = ledger.trust.by_key_id(verified.signer_key_id)
            if entry is None:  # verify_release just found it; the store changed meanwhile
                raise RefusedError(
                    "signer", f"key {verified.signer_key_id[:16]} left the trust store"
                )
            (out_dir / PUBLIC_KEY).write_text(entry.public_key)
        if not recipients:
            (out_dir / README).write_text(_readme(verified, command))
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            for child in list(out_dir.iterdir()):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return ExportResult(
        release=str(verified), directory=out_dir, files=len(verified.files) + 1, command=command,
        reconciled=tuple(reconciled), sealed_to=tuple(r.name for r in recipients),
    )  # fmt: skip
