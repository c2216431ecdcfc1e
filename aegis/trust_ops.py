"""Trust-store changes as workspace operations: signed by an admin, audited, committed.

The admin key never lives in the workspace: whoever can read the workspace
could otherwise add an approver key of their own and approve their own
promotion (the two-person rule would hold only on paper). Every change is
made against the verified ledger (a restored older trust store is refused,
never signed on top of), audited with the store's new head, then committed
with the audit anchor.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from aegis.crypto.keys import PrivateKey, generate_key, load_private_key
from aegis.crypto.sealing import ServingIdentity, generate_identity
from aegis.crypto.truststore import KEY_TYPES, P256, X25519, TrustEntry
from aegis.errors import RefusedError, UsageError
from aegis.ledger import Action, Ledger
from aegis.text import check_reason
from aegis.workspace import Workspace

CREATABLE_ROLES = ("admin", "supplier", "operator", "approver", "serving", "monitor")


def require_admin_key_outside(ws: Workspace) -> None:
    """Refuses while the workspace still holds its admin key (workspaces made before 0.2).

    Raises:
        RefusedError: ``admin-key``, saying how to move it.
    """
    legacy = ws.legacy_admin_key_path
    if legacy.exists() or legacy.is_symlink():
        raise RefusedError(
            "admin-key",
            f"the admin key is inside the workspace ({legacy.relative_to(ws.root)}), where "
            "anyone who can read the workspace can change the trust store; move it out: "
            f"`mv {legacy} ~/aegis-admin.pem && mv {legacy}.pub ~/aegis-admin.pem.pub`, then "
            "pass --admin-key ~/aegis-admin.pem (or AEGIS_ADMIN_KEY)",
        )


def _admin(ws: Workspace, admin_key: Path | None) -> PrivateKey:
    require_admin_key_outside(ws)
    if admin_key is None:
        raise UsageError("trust changes are signed by an admin key: give --admin-key PATH "
                         "(or AEGIS_ADMIN_KEY)")  # fmt: skip
    if ws.contains(admin_key):
        raise RefusedError(
            "admin-key", f"{admin_key} is inside the workspace; keep the admin key outside it"
        )
    return load_private_key(admin_key)


def admin_private_key(ws: Workspace, admin_key: Path | None) -> PrivateKey:
    """The admin's key for a decision outside the trust store (kept outside the workspace).

    Raises:
        UsageError: No key given.
        RefusedError: ``admin-key``: it lies inside the workspace.
    """
    return _admin(ws, admin_key)


def check_key_out(out: Path) -> None:
    """Refuses to write a new private key inside a workspace (this one or another).

    Raises:
        RefusedError: ``key-location``: anyone who can read the workspace could use it.
    """
    from aegis.pipeline.layout import enclosing_workspace

    if enclosing_workspace(out.expanduser().resolve().parent) is not None:
        raise RefusedError(
            "key-location",
            f"{out} is inside the workspace; write private keys outside it (anyone who can "
            "read the workspace could sign with it)",
        )


def _record(ledger: Ledger, admin: PrivateKey, action: str, message: str, **details: str) -> None:
    ledger.append(
        action,
        actor=admin.key_id,
        subjects={"trust": "sha256:" + ledger.trust.head},
        details=details,
    )
    ledger.commit(message, [".aegis/trust.json"])


def new_key(
    ws: Workspace,
    *,
    role: str,
    name: str,
    owner: str,
    out: Path,
    admin_key: Path | None,
    ledger: Ledger | None = None,
    key_type: str = P256,
) -> TrustEntry:
    """Creates a key pair at ``out`` and registers it, signed by an admin key.

    ``key_type`` ``x25519`` makes a serving identity (role ``serving`` only): an age
    identity at ``out`` and its recipient at ``out.pub``; it opens sealed exports and
    signs nothing.

    Raises:
        UsageError: Unknown role or key type, taken name, no admin key, or ``out`` exists.
        RefusedError: The admin key is not an active admin, lives in the
            workspace, or ``out`` is inside the workspace.
    """
    if role not in CREATABLE_ROLES:
        raise UsageError(f"role '{role}': one of {', '.join(CREATABLE_ROLES)}")
    if key_type not in KEY_TYPES:
        raise UsageError(f"key type '{key_type}': one of {', '.join(KEY_TYPES)}")
    if key_type == X25519 and role != "serving":
        raise UsageError("an x25519 key is a serving identity: --role serving")
    check_key_out(out)
    admin = _admin(ws, admin_key)
    ledger = ledger or Ledger.load(ws)
    with ledger.locked():
        store = ledger.trust
        if any(e.name == name for e in store.entries):
            raise UsageError(f"a trust entry named '{name}' already exists")
        key = generate_identity(out) if key_type == X25519 else generate_key(out)
        try:
            if isinstance(key, ServingIdentity):
                store.add_identity(name=name, owner=owner, recipient=key.recipient, admin=admin)
            else:
                store.add(name=name, role=role, owner=owner, public_pem=key.public_pem, admin=admin)
        except BaseException:
            for p in (out, out.with_name(out.name + ".pub")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            raise
        _record(
            ledger, admin, Action.TRUST_ADD, f"trust: add {role} key '{name}' ({owner})",
            name=name, role=role, owner=owner, key_id=key.key_id,
            **({"key_type": X25519} if key_type == X25519 else {}),
        )  # fmt: skip
    return store.get(name)


def change_status(
    ws: Workspace,
    name: str,
    *,
    status: str,
    reason: str,
    admin_key: Path | None,
    ledger: Ledger | None = None,
) -> None:
    """Revokes or retires a key, signed by an admin key.

    Raises:
        UsageError: A reason with control characters, an unknown name, the
            pipeline key, or a key already in that status.
    """
    reason = check_reason(reason)
    admin = _admin(ws, admin_key)
    ledger = ledger or Ledger.load(ws)
    with ledger.locked():
        store = ledger.trust
        entry = store.get(name)
        if entry.role == "pipeline":
            raise UsageError("the pipeline key is managed by the workspace, not by hand")
        store.set_status(name, status, reason=reason, admin=admin)
        op = "revoke" if status == "revoked" else "retire"
        message = f"trust: {op} '{name}'" + (f": {reason}" if reason else "")
        _record(
            ledger, admin, f"trust.{op}", message,
            name=name, role=entry.role, owner=entry.owner, key_id=entry.key_id, reason=reason,
        )  # fmt: skip
