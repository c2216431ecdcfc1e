"""Rotating a serving identity: a new one, the served versions re-sealed to it, the old retired.

``aegis keys rotate NAME --out NEW`` (admin), under the workspace lock:

1. decides what to re-seal, the versions a serving host may be asked to serve: each
   registered model's prod and its known-good versions (those that held prod before and
   are not marked bad: the versions ``aegis rollback`` may return to), and verifies each
   (fetching from DVC if needed) before anything changes;
2. creates the new X25519 identity and adds it to the trust store (``trust.add``);
3. seals each version to it, into ``.aegis/sealed/<new name>/<model>@<version>/``
   (git-ignored: ciphertext for the serving host, copied there by whoever deploys),
   audited as one ``seal.resealed`` entry (the versions, both identities);
4. retires the old identity (``trust.retire``): Aegis no longer serves a seal it opens.

A failure in step 3 leaves the new identity added and the old one active (nothing
retired): retire the new one by hand (``aegis trust retire``) and rotate again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aegis.crypto.truststore import X25519, TrustEntry, TrustStore
from aegis.errors import UsageError
from aegis.fileutil import atomic_write, ensure_dir
from aegis.ledger import Action, Ledger
from aegis.registry.export import export_release
from aegis.registry.targets import Target
from aegis.registry.verify import open_release
from aegis.text import check_reason
from aegis.trust_ops import admin_private_key, change_status, new_key
from aegis.workspace import Workspace


@dataclass(frozen=True)
class Rotation:
    """What a rotation did."""

    old: TrustEntry
    new: TrustEntry
    resealed: tuple[tuple[str, Path], ...]  # (NAME@vX.Y.Z, directory)


def sealed_root(ws: Workspace) -> Path:
    """Where re-sealed exports live: ``.aegis/sealed/<identity>/<model>@<version>/``."""
    return ws.aegis_dir / "sealed"


def served_versions(ledger: Ledger) -> list[Target]:
    """Each model's prod, then its known-good versions (held prod before, not marked bad)."""
    from aegis.registry.tags import models, read_registry

    out: list[Target] = []
    for model in models(ledger.ws):
        state = read_registry(ledger, model)
        ordered = [state.prod] if state.prod else []
        ordered += [v for v in reversed(state.prod_history) if v not in state.bad]
        for version in dict.fromkeys(ordered):
            out.append(Target(model=model, version=version))
    return out


def _next_name(store: TrustStore, name: str) -> str:
    match = re.fullmatch(r"(.+)\.(\d+)", name)
    base, n = (match.group(1), int(match.group(2))) if match else (name, 1)
    taken = {e.name for e in store.entries}
    while f"{base}.{n}" in taken or n == 1:
        n += 1
    return f"{base}.{n}"


def rotate_identity(
    ws: Workspace,
    name: str,
    *,
    out: Path,
    new_name: str | None,
    reason: str,
    admin_key: Path | None,
    ledger: Ledger | None = None,
) -> Rotation:
    """Rotates the X25519 serving identity ``name`` (see the module docstring).

    Raises:
        UsageError: ``name`` is not an active X25519 serving identity, a taken new name,
            ``out`` exists, no admin key, a re-sealed export directory exists already.
        RefusedError: The admin key, any verification check of a version to re-seal.
    """
    reason = check_reason(reason)
    admin = admin_private_key(ws, admin_key)
    ledger = ledger or Ledger.load(ws)
    with ledger.locked():
        store = ledger.trust
        old = store.get(name)
        if old.key_type != X25519 or old.role != "serving":
            raise UsageError(
                f"'{name}' is not an X25519 serving identity; a signing key is rotated with "
                "`aegis keys new` and then `aegis trust retire`"
            )
        if old.status != "active":
            raise UsageError(f"'{name}' is {old.status}: nothing to rotate")
        new_name = new_name or _next_name(store, name)
        # verified before anything changes: a version that does not verify stops the rotation
        verified = [open_release(ledger, target) for target in served_versions(ledger)]
        root = sealed_root(ws)
        places = [root / new_name / str(v) for v in verified]
        for place in places:
            if place.exists() or place.is_symlink():
                raise UsageError(f"{place}: exists already")
        new = new_key(
            ws, role="serving", name=new_name, owner=old.owner, out=out, admin_key=admin_key,
            ledger=ledger, key_type=X25519,
        )  # fmt: skip
        resealed = []
        ensure_dir(ws.root, root)
        if not (root / ".gitignore").exists():
            atomic_write(root / ".gitignore", b"*\n")  # ciphertext for serving hosts, not git
        for v, place in zip(verified, places, strict=True):
            ensure_dir(ws.root, place)
            export_release(ledger, v.target, place, seal_to=[new.name], checked=True)
            resealed.append((str(v), place))
        ledger.append(
            Action.SEAL_RESEALED,
            actor=admin.key_id,
            subjects={"identity": new.key_id},
            details={
                "name": new.name, "replaces": old.name, "replaces_key_id": old.key_id,
                "releases": [r for r, _ in resealed],
                "directories": [str(p.relative_to(ws.root)) for _, p in resealed],
            },
        )  # fmt: skip
        change_status(
            ws, name, status="retired", reason=f"{reason}: replaced by '{new.name}'",
            admin_key=admin_key, ledger=ledger,
        )  # fmt: skip
        return Rotation(old=old, new=new, resealed=tuple(resealed))
