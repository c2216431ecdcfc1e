"""Trust-store changes as workspace operations: signed, committed, audited."""

from __future__ import annotations

import contextlib
from pathlib import Path

from aegis import vcs
from aegis.crypto.keys import PrivateKey, generate_key, load_private_key
from aegis.crypto.truststore import ROLES, TrustEntry
from aegis.errors import UsageError
from aegis.workspace import Workspace

CREATABLE_ROLES = ("admin", "supplier", "operator", "approver")


def _admin(ws: Workspace, admin_key: Path | None) -> PrivateKey:
    path = admin_key or ws.admin_key_path
    if not path.exists():
        raise UsageError(f"{path}: admin key not found (give --admin-key)")
    return load_private_key(path)


def _record(ws: Workspace, admin: PrivateKey, action: str, message: str, **details: str) -> None:
    store = ws.trust()
    vcs.commit_paths(ws.root, message, [".aegis/trust.json"])
    ws.audit().append(
        actor=admin.key_id,
        action=action,
        pipeline_key=ws.pipeline_key(),
        subjects={"trust": "sha256:" + store.head},
        details=details,
    )


def new_key(
    ws: Workspace, *, role: str, name: str, owner: str, out: Path, admin_key: Path | None
) -> TrustEntry:
    """Creates a key pair at ``out`` and registers it, signed by an admin key.

    Raises:
        UsageError: Unknown role, taken name, or ``out`` exists.
        RefusedError: The admin key is not an active admin.
    """
    if role not in CREATABLE_ROLES:
        raise UsageError(f"role '{role}': one of {', '.join(CREATABLE_ROLES)}")
    assert role in ROLES
    admin = _admin(ws, admin_key)
    with ws.lock():
        store = ws.trust()
        if any(e.name == name for e in store.entries):
            raise UsageError(f"a trust entry named '{name}' already exists")
        key = generate_key(out)
        try:
            store.add(name=name, role=role, owner=owner, public_pem=key.public_pem, admin=admin)
        except BaseException:
            for p in (out, out.with_name(out.name + ".pub")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            raise
        _record(
            ws,
            admin,
            "trust.add",
            f"trust: add {role} key '{name}' ({owner})",
            name=name,
            role=role,
            owner=owner,
            key_id=key.key_id,
        )
    return ws.trust().get(name)


def change_status(
    ws: Workspace, name: str, *, status: str, reason: str, admin_key: Path | None
) -> None:
    """Revokes or retires a key, signed by an admin key."""
    admin = _admin(ws, admin_key)
    with ws.lock():
        store = ws.trust()
        entry = store.get(name)
        if entry.role == "pipeline":
            raise UsageError("the pipeline key is managed by the workspace, not by hand")
        store.set_status(name, status, reason=reason, admin=admin)
        op = "revoke" if status == "revoked" else "retire"
        _record(
            ws,
            admin,
            f"trust.{op}",
            f"trust: {op} '{name}'" + (f": {reason}" if reason else ""),
            name=name,
            role=entry.role,
            owner=entry.owner,
            key_id=entry.key_id,
            reason=reason,
        )
