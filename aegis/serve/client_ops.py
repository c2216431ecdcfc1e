"""Changing the API client list: audited workspace operations, signed by an operator.

Each change verifies the current list, builds the next one (``serial`` + 1, naming
its predecessor's digest), signs it with the operator's key, audits it as
``api.clients`` with the signed document inside, then writes the file copy and
commits it with the audit anchor.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from aegis.crypto.documents import body_digest, sign_document
from aegis.crypto.keys import load_private_key
from aegis.errors import UsageError
from aegis.fileutil import atomic_write
from aegis.ledger import Action, Ledger
from aegis.serve.clients import (
    Client,
    ClientList,
    Limit,
    check_name,
    list_body,
    list_path,
    load_clients,
    new_token,
    read_secret,
    token_hash,
)
from aegis.text import check_reason
from aegis.timeutil import utc_now
from aegis.workspace import Workspace


@dataclass(frozen=True)
class NewClient:
    """A client just made, with the token shown this once."""

    client: Client
    token: str


def _require_key(key_path: Path | None) -> None:
    if key_path is None:
        raise UsageError("an operator key signs the client list: --key (or AEGIS_KEY)")


def _change(ledger: Ledger, key_path: Path, clients: list[Client], current: ClientList, **what):
    operator = load_private_key(key_path)
    ledger.trust.require_signer(operator.key_id, role="operator", what=str(key_path), new=True)
    body = list_body(clients, serial=current.serial + 1, previous=current.digest)
    document = sign_document(operator, body)
    ledger.append(
        Action.API_CLIENTS,
        actor=operator.key_id,
        subjects={"clients": body_digest(body)},
        details={**what, "serial": body["serial"], "signed": document},
    )
    path = list_path(ledger.ws)
    atomic_write(path, json.dumps(document, indent=1, sort_keys=True).encode() + b"\n")
    message = f"api clients: {what['op']} '{what['name']}'"
    ledger.commit(message, [str(path.relative_to(ledger.ws.root))])


def new_client(
    ws: Workspace,
    *,
    name: str,
    scopes: tuple[str, ...],
    rate: Limit,
    quota: Limit,
    key_path: Path | None,
    ledger: Ledger | None = None,
) -> NewClient:
    """Creates a client and returns its token (stored only as a keyed hash).

    Raises:
        UsageError: No operator key, or a client of that name exists (revoked ones too:
            a name in the logs always means one client).
        RefusedError: ``signer``: the key is not an active operator; ``api-clients``:
            the current list does not verify.
    """
    check_name(name)
    _require_key(key_path)
    ledger = ledger or Ledger.load(ws)
    with ledger.locked():
        current = load_clients(ledger)
        if current.get(name) is not None:
            raise UsageError(f"an API client named '{name}' exists (names are never reused)")
        secret = read_secret(ws, create=True)
        token = new_token()
        operator = load_private_key(key_path)
        client = Client(
            name=name, id="c-" + secrets.token_hex(5), scopes=scopes, rate=rate, quota=quota,
            token_hash=token_hash(secret, token), created=utc_now(), created_by=operator.key_id,
        )  # fmt: skip
        _change(ledger, key_path, [*current.clients, client], current, op="add", name=name)
    return NewClient(client=client, token=token)


def revoke_client(
    ws: Workspace, name: str, *, reason: str, key_path: Path | None, ledger: Ledger | None = None
) -> Client:
    """Revokes a client: its token is refused (403) from the gateway's next request on.

    Raises:
        UsageError: No operator key, an unknown name, or a client already revoked.
    """
    reason = check_reason(reason)
    _require_key(key_path)
    ledger = ledger or Ledger.load(ws)
    with ledger.locked():
        current = load_clients(ledger, adopt=True)  # revoking only narrows a list
        client = current.get(name)
        if client is None:
            raise UsageError(f"no API client named '{name}'")
        if client.status == "revoked":
            raise UsageError(f"API client '{name}' is already revoked")
        revoked = replace(client, status="revoked", revoked=utc_now(), reason=reason)
        clients = [revoked if c.name == name else c for c in current.clients]
        _change(ledger, key_path, clients, current, op="revoke", name=name, reason=reason)
    return revoked


def resign_clients(
    ws: Workspace, *, reason: str, key_path: Path | None, ledger: Ledger | None = None
) -> ClientList:
    """Signs the current client list again, unchanged, with an operator in good standing.

    The way back after the operator who signed the list is revoked: the gateway then
    admits no one (it refuses the list), and whoever re-signs takes responsibility for
    every client on it (revoke the ones that operator should not have added first).
    Returns the list as it was.

    Raises:
        UsageError: No operator key; the list is already signed by an operator in
            good standing (nothing to do).
    """
    reason = check_reason(reason)
    _require_key(key_path)
    ledger = ledger or Ledger.load(ws)
    with ledger.locked():
        current = load_clients(ledger, adopt=True)
        if not current.signer_revoked:
            raise UsageError("the client list is signed by an operator in good standing already")
        _change(ledger, key_path, list(current.clients), current, op="resign",
                name=current.signer or "", reason=reason)  # fmt: skip
    return current
