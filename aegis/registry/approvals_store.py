"""Signed approval requests and approvals in ``.aegis/approvals/<model>/<version>/``.

See :mod:`aegis.approval` for the policy. Every read verifies the signature
against the trust store; every refusal is ``RefusedError("approval", ...)``
(exit 1) naming what is wrong. Writes here do not commit or audit: the
caller (:mod:`aegis.registry.promotion`) does both under the workspace lock,
and removes what it wrote if either fails. Whether an approval file counts
(signature, binding, audit entry, key status) is decided by
:mod:`aegis.registry.approvals_review`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aegis.approval import GateResult
from aegis.crypto.keys import PrivateKey, canonical_json, verify_signature
from aegis.crypto.truststore import TrustEntry, TrustStore
from aegis.errors import RefusedError
from aegis.fileutil import atomic_write
from aegis.timeutil import parse_utc, utc_now
from aegis.workspace import Workspace

REQUEST_KIND = "aegis-promotion-request/1"
APPROVAL_KIND = "aegis-approval/1"
REQUEST_FILE = "request.json"
WAITING_FILE = "waiting.json"  # a paused Prefect run; machine-local, git-ignored


@dataclass(frozen=True)
class Candidate:
    """What a request or approval is bound to: a verified release's identity."""

    model: str
    version: str
    model_digest: str
    evidence_digest: str

    @classmethod
    def of(cls, verified: Any) -> Candidate:
        """From a ``VerifiedRelease`` (model_name, version, model_digest, evidence_digest)."""
        return cls(
            verified.model_name, verified.version, verified.model_digest, verified.evidence_digest
        )


@dataclass(frozen=True)
class ApprovalRequest:
    """A verified, signed promotion request."""

    path: Path
    body: dict[str, Any]
    digest: str  # sha256 of the canonical body: approvals bind to it

    @property
    def requester_owner(self) -> str:
        return self.body["requester"]["owner"]

    @property
    def requester_key(self) -> str:
        return self.body["requester"]["key_id"]

    @property
    def expires(self) -> str:
        return self.body["expires"]

    def expired(self, now: str | None = None) -> bool:
        return parse_utc(now or utc_now()) >= parse_utc(self.expires)

    def binds(self, candidate: Candidate) -> bool:
        b = self.body
        return (b["model"], b["version"], b["candidate"], b["evidence"]) == (
            candidate.model,
            candidate.version,
            candidate.model_digest,
            candidate.evidence_digest,
        )


@dataclass(frozen=True)
class Approval:
    """A verified, signed approval or rejection."""

    path: Path
    body: dict[str, Any]
    owner: str
    key_id: str

    @property
    def decision(self) -> str:
        return self.body["decision"]

    @property
    def reason(self) -> str:
        return self.body.get("reason", "")

    @property
    def digest(self) -> str:
        """sha256 of the canonical body: the audit entry of the decision names it."""
        return body_digest(self.body)


def _refuse(message: str) -> RefusedError:
    return RefusedError("approval", message)


def version_dir(ws: Workspace, model: str, version: str) -> Path:
    return ws.approvals_dir / model / version


def body_digest(body: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def _signed(key: PrivateKey, body: dict[str, Any]) -> bytes:
    doc = {"body": body, "key_id": key.key_id, "signature": key.sign(canonical_json(body))}
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def _read_signed(path: Path, trust: TrustStore, kind: str) -> tuple[dict[str, Any], TrustEntry]:
    """Reads a signed document and checks its signature against the trust store."""
    name = f"{path.parent.name}/{path.name}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        body, key_id, signature = doc["body"], doc["key_id"], doc["signature"]
        if not isinstance(body, dict) or body.get("kind") != kind:
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _refuse(f"{name}: unreadable or not a {kind} document") from None
    entry = trust.by_key_id(str(key_id))
    if entry is None:
        raise _refuse(f"{name}: signed by an unknown key ({str(key_id)[:12]})")
    if not verify_signature(entry.public_key, canonical_json(body), str(signature)):
        raise _refuse(f"{name}: signature does not verify (tampered or unsigned)")
    return body, entry


# -- requests ------------------------------------------------------------------------


def load_request(ws: Workspace, model: str, version: str) -> ApprovalRequest | None:
    """The verified request for ``model@version``, or None if there is none.

    Raises:
        RefusedError: ``approval``: tampered, unsigned, or signed by a key that is
            not an operator (or is revoked), or naming another model/version.
    """
    path = version_dir(ws, model, version) / REQUEST_FILE
    if not path.exists():
        return None
    body, entry = _read_signed(path, ws.trust(), REQUEST_KIND)
    where = f"{model}/{version}/{REQUEST_FILE}"
    if entry.role != "operator" or entry.status == "revoked":
        raise _refuse(f"{where}: signer '{entry.name}' is not a trusted operator")
    try:
        requester = body["requester"]
        if requester["key_id"] != entry.key_id or requester["owner"] != entry.owner:
            raise _refuse(f"{where}: requester does not match the signing key")
        if (body["model"], body["version"]) != (model, version):
            raise _refuse(f"{where}: names {body['model']}@{body['version']} (moved?)")
        parse_utc(body["expires"])
    except (KeyError, TypeError, ValueError):
        raise _refuse(f"{where}: malformed request") from None
    return ApprovalRequest(path, body, body_digest(body))


def request_path(ws: Workspace, model: str, version: str) -> Path:
    return version_dir(ws, model, version) / REQUEST_FILE


def write_request(
    ws: Workspace,
    candidate: Candidate,
    *,
    operator: PrivateKey,
    requester: TrustEntry,
    gates: list[GateResult],
    ttl_seconds: int,
) -> ApprovalRequest:
    """Signs and writes a new request (replacing any earlier one).

    The approvals of an earlier request stay until the caller has committed and
    audited the new one (:func:`drop_superseded`); bound to the old request's
    digest, they never count for the new one.

    Returns:
        The request. The caller commits ``request.json`` and ``.gitignore``.
    """
    created = utc_now()
    expires = (parse_utc(created) + timedelta(seconds=ttl_seconds)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    body = {
        "kind": REQUEST_KIND,
        "model": candidate.model,
        "version": candidate.version,
        "candidate": candidate.model_digest,
        "evidence": candidate.evidence_digest,
        "requester": {"key_id": requester.key_id, "owner": requester.owner},
        "created": created,
        "expires": expires,
        "gates": [
            {"gate": g.gate, "measured": g.measured, "threshold": g.threshold, "passed": g.passed}
            for g in gates
        ],
    }
    directory = version_dir(ws, candidate.model, candidate.version)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / ".gitignore", f"/{WAITING_FILE}\n".encode())
    atomic_write(directory / REQUEST_FILE, _signed(operator, body))
    return ApprovalRequest(directory / REQUEST_FILE, body, body_digest(body))


def drop_superseded(ws: Workspace, request: ApprovalRequest) -> list[Path]:
    """Removes the approval files of earlier requests (call once ``request`` is committed).

    Returns:
        The removed paths (for the caller to commit).
    """
    removed = []
    for path in sorted(request.path.parent.glob("approval-*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(path.read_text())["body"]["request"] == request.digest:
                continue  # bound to this request (cannot happen under the lock; kept)
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# -- approvals -----------------------------------------------------------------------


def _approval_path(ws: Workspace, model: str, version: str, key_id: str) -> Path:
    return version_dir(ws, model, version) / f"approval-{key_id}.json"


def check_approver(
    trust: TrustStore, key: PrivateKey, request: ApprovalRequest, candidate: Candidate
) -> TrustEntry:
    """The approver's trust entry if ``key`` may decide on ``request`` now.

    Raises:
        RefusedError: ``approval``: not a current approver, same owner as the
            requester, an expired request, or a request for another candidate.
    """
    entry = trust.by_key_id(key.key_id)
    if entry is None or entry.role != "approver" or entry.status != "active":
        what = "unknown" if entry is None else f"'{entry.name}' ({entry.role}, {entry.status})"
        raise _refuse(f"key {what} is not a current approver")
    if entry.owner == request.requester_owner:
        raise _refuse(f"approver owner '{entry.owner}' is the requester's owner (two-person rule)")
    if request.expired():
        raise _refuse(f"the request for {candidate.model}@{candidate.version} expired at "
                      f"{request.expires}; the operator must request again")  # fmt: skip
    if not request.binds(candidate):
        raise _refuse(
            f"the request names another candidate or evidence digest than "
            f"{candidate.model}@{candidate.version} (replayed request?)"
        )
    return entry


DECISION_ACTIONS = {"approve": "approval.granted", "reject": "approval.rejected"}


def decided(ws: Workspace, key_id: str, request: ApprovalRequest) -> bool:
    """Whether the audit log holds a decision by ``key_id`` on ``request``."""
    return any(
        e.action in DECISION_ACTIONS.values()
        and e.actor == key_id
        and e.subjects.get("request") == request.digest
        for e in ws.audit().entries()
    )


def read_approval(path: Path, trust: TrustStore) -> tuple[Approval, TrustEntry]:
    """A signed approval file, its signature checked, and its signer's trust entry.

    Only the signature and the signer are checked here: binding, audit entry and
    key status are :mod:`aegis.registry.approvals_review`'s.

    Raises:
        RefusedError: ``approval``: unreadable, unknown key, bad signature, or the
            file name or ``approver`` field names another key than the signer.
    """
    body, entry = _read_signed(path, trust, APPROVAL_KIND)
    approver = body.get("approver")
    if path.name != f"approval-{entry.key_id}.json" or not (
        isinstance(approver, dict) and approver.get("key_id") == entry.key_id
    ):
        raise _refuse(f"{path.name}: approver does not match the signing key")
    return Approval(path, body, entry.owner, entry.key_id), entry


def write_approval(
    ws: Workspace,
    candidate: Candidate,
    request: ApprovalRequest,
    *,
    approver: PrivateKey,
    decision: str,
    reason: str,
) -> Approval:
    """Checks the approver (see :func:`check_approver`) and writes the signed decision.

    Returns:
        The approval. The caller commits and audits it (``approval.granted`` or
        ``approval.rejected`` naming its :attr:`Approval.digest`), or removes the
        file if either fails.

    Raises:
        RefusedError: ``approval``: see :func:`check_approver`; or this key already
            recorded a decision on this request.
    """
    if decision not in DECISION_ACTIONS:
        raise _refuse(f"unknown decision {decision!r}")
    trust = ws.trust()
    entry = check_approver(trust, approver, request, candidate)
    path = _approval_path(ws, candidate.model, candidate.version, approver.key_id)
    if decided(ws, entry.key_id, request):  # a file there without its audit entry is replaced
        raise _refuse(f"'{entry.name}' already recorded a decision on this request")
    body = {
        "kind": APPROVAL_KIND,
        "model": candidate.model,
        "version": candidate.version,
        "candidate": candidate.model_digest,
        "evidence": candidate.evidence_digest,
        "request": request.digest,
        "decision": decision,
        "reason": reason,
        "approver": {"key_id": entry.key_id, "owner": entry.owner},
        "created": utc_now(),
    }
    atomic_write(path, _signed(approver, body))
    return Approval(path, body, entry.owner, entry.key_id)


# -- a waiting Prefect run (machine-local: which flow run `aegis approve` resumes) ------


def mark_waiting(ws: Workspace, model: str, version: str, flow_run_id: str) -> None:
    """Records that flow run ``flow_run_id`` waits for approvals of ``model@version``."""
    body = {"flow_run_id": flow_run_id, "pid": os.getpid(), "since": utc_now()}
    atomic_write(version_dir(ws, model, version) / WAITING_FILE, json.dumps(body).encode())


def waiting_run(ws: Workspace, model: str, version: str) -> str | None:
    """The id of the flow run waiting for approvals of ``model@version``, if any.

    A marker left by a process that is gone (killed while waiting) names nothing.
    """
    path = version_dir(ws, model, version) / WAITING_FILE
    try:
        data = json.loads(path.read_text())
        run_id, pid = str(data["flow_run_id"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return run_id


def clear_waiting(ws: Workspace, model: str, version: str, flow_run_id: str) -> None:
    """Removes the waiting marker if it still names ``flow_run_id``."""
    path = version_dir(ws, model, version) / WAITING_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["flow_run_id"] == flow_run_id:
            path.unlink()
