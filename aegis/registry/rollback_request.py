"""Operator-signed rollback requests: how a rollback runs where no operator key is.

A ``rollback`` deployment on a Prefect server can be started by any API user
(OSS Prefect has no access control), so it takes no actor and no key path:
it takes a request that an operator signed at their own machine
(``aegis rollback --sign-request FILE``). The run verifies it here: signed by
an active operator of this workspace, for this workspace, not expired, and
never used before (its digest is bound into the rollback's audit entries).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aegis.crypto.documents import sign_document, verify_document
from aegis.crypto.keys import load_private_key
from aegis.errors import RefusedError, UsageError
from aegis.ledger import Action, Ledger
from aegis.registry.targets import Target, parse_target
from aegis.text import check_reason
from aegis.timeutil import format_utc, parse_utc, utc_now

KIND = "aegis-rollback-request/1"
TTL = timedelta(minutes=15)  # long enough to start a run, short enough not to be a standing order


@dataclass(frozen=True)
class RollbackRequest:
    """A verified rollback request: who asked, for what, and its digest."""

    actor: str
    to: Target | None
    model: str | None
    reason: str
    digest: str


def sign_request(
    ledger: Ledger, *, operator_key_path: Path, reason: str, to: Target | None, model: str | None
) -> dict[str, Any]:
    """An operator's signed rollback request (JSON-serializable).

    Raises:
        UsageError: No reason.
        RefusedError: ``signer``: the key is not an active operator.
    """
    if not reason or not check_reason(reason):
        raise UsageError("a rollback needs --reason (it goes to the audit log)")
    key = load_private_key(operator_key_path)
    ledger.trust.require_signer(key.key_id, role="operator", what=str(operator_key_path), new=True)
    now = utc_now()
    body = {
        "kind": KIND, "workspace": ledger.pipeline_entry().key_id, "to": str(to) if to else None,
        "model": model, "reason": reason.strip(), "created": now,
        "expires": format_utc(parse_utc(now) + TTL),
        "nonce": secrets.token_hex(16),
    }  # fmt: skip
    return sign_document(key, body)


def _used(ledger: Ledger, digest: str) -> bool:
    return any(
        e.details.get("request") == digest for e in ledger.log.by_action(Action.intent("rollback"))
    )


def verify_request(ledger: Ledger, document: Any) -> RollbackRequest:
    """Checks a signed rollback request before a run acts on it.

    Raises:
        RefusedError: ``signature`` (malformed, unknown key, bad signature),
            ``signer`` (not an active operator), ``request`` (another workspace,
            expired, not yet valid) or ``replay`` (used before).
    """
    signed = verify_document(document, kind=KIND, trust=ledger.trust)
    entry = ledger.trust.require_signer(
        signed.signer.key_id, role="operator", what="the rollback request", new=True
    )
    body = signed.body
    if body.get("workspace") != ledger.pipeline_entry().key_id:
        raise RefusedError("request", "the rollback request was signed for another workspace")
    try:
        created, expires = parse_utc(str(body["created"])), parse_utc(str(body["expires"]))
        now = parse_utc(utc_now())
    except (KeyError, ValueError):
        raise RefusedError("request", "the rollback request has no valid times") from None
    if expires - created > TTL or not created - timedelta(minutes=5) <= now <= expires:
        raise RefusedError("request", f"the rollback request expired at {body['expires']}")
    if _used(ledger, signed.digest):
        raise RefusedError("replay", "this rollback request was used before (sign a new one)")
    reason, model, to = body.get("reason"), body.get("model"), body.get("to")
    if not isinstance(reason, str) or not check_reason(reason):
        raise RefusedError("request", "the rollback request has no valid reason")
    if model is not None and not isinstance(model, str):
        raise RefusedError("request", "the rollback request names no valid model")
    try:
        target = parse_target(to) if isinstance(to, str) else None
    except UsageError as exc:
        raise RefusedError("request", f"the rollback request's target: {exc}") from None
    return RollbackRequest(entry.key_id, target, model, reason, signed.digest)
