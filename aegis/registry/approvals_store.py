"""Promotion requests and approvals: signed documents kept in the audit log.

See :mod:`aegis.approval` for the gates. A request is signed by the operator
who asks for the promotion and binds the candidate (model digest), the
evidence digest, an expiry and the promotion policy (the ``promote:``
section and its digest); an approval or rejection is signed by an approver
and binds the candidate, evidence and the request's digest. Each document
is kept whole in its audit entry (``approval.requested``,
``approval.granted``, ``approval.rejected``), so it counts from the audit log
alone: deleting, editing or planting a file in
``.aegis/approvals/<model>/<version>/`` changes nothing. The files there are
copies for people and git history, never read to decide anything.

Writes here build and sign documents; the caller
(:mod:`aegis.registry.promotion`) audits and commits them under the lock.
Whether a decision counts is :mod:`aegis.registry.approvals_review`'s rule.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aegis.approval import GateResult
from aegis.config import PromoteParams, duration_seconds, policy_digest, policy_of
from aegis.crypto.keys import PrivateKey
from aegis.crypto.truststore import TrustEntry, TrustStore
from aegis.errors import RefusedError
from aegis.fileutil import atomic_write, read_json_object
from aegis.ledger import APPROVAL_KIND, REQUEST_KIND, Action, Ledger, SignedEntry
from aegis.pipeline.layout import Layout
from aegis.timeutil import format_utc, parse_utc, utc_now

REQUEST_FILE = "request.json"
WAITING_FILE = "waiting.json"  # a paused Prefect run; machine-local, git-ignored
DECISION_ACTIONS = Action.DECISIONS


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
    """A verified, signed promotion request, as the audit log holds it."""

    body: dict[str, Any]
    digest: str  # sha256 of the canonical body: approvals bind to it
    seq: int  # its approval.requested entry
    signer: TrustEntry

    @property
    def requester_owner(self) -> str:
        return self.body["requester"]["owner"]

    @property
    def requester_key(self) -> str:
        return self.body["requester"]["key_id"]

    @property
    def expires(self) -> str:
        return self.body["expires"]

    @property
    def policy_digest(self) -> str | None:
        return self.body.get("policy_digest")

    @property
    def approvals_required(self) -> int:
        return int((self.body.get("policy") or {}).get("approvals_required", 1))

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
class RequestStatus:
    """The latest request of a version and, if it cannot be used, why."""

    request: ApprovalRequest | None
    unusable: str | None  # "old-format", "unsigned", "malformed": counts as expired


def _refuse(message: str) -> RefusedError:
    return RefusedError("approval", message)


def version_dir(layout: Layout, model: str, version: str) -> Path:
    return layout.approvals(model, version)


def latest_request(ledger: Ledger, model: str, version: str) -> RequestStatus:
    """The latest audited request for ``model@version`` (None if there is none).

    A request recorded before requests were kept in the log (no signed
    document, no policy digest) is reported as unusable: it counts as expired
    and the operator requests again.
    """
    recorded = ledger.requests(model, version)
    if not recorded:
        return RequestStatus(None, None)
    return _request_status(recorded[-1], model, version)


def all_requests(ledger: Ledger, model: str, version: str) -> list[ApprovalRequest]:
    """Every usable-in-form audited request of ``model@version``, oldest first."""
    statuses = (_request_status(r, model, version) for r in ledger.requests(model, version))
    return [s.request for s in statuses if s.request is not None]


def _request_status(last: SignedEntry | Any, model: str, version: str) -> RequestStatus:
    if not isinstance(last, SignedEntry):
        return RequestStatus(None, "it predates requests bound to a policy (request again)")
    body, signer = last.body, last.signer
    try:
        requester = body["requester"]
        if signer.role != "operator" or signer.status == "revoked":
            return RequestStatus(None, f"its signer '{signer.name}' is not a trusted operator")
        if requester["key_id"] != signer.key_id or requester["owner"] != signer.owner:
            return RequestStatus(None, "its requester does not match the signing key")
        if (body["model"], body["version"]) != (model, version):
            return RequestStatus(None, "it names another model or version")
        parse_utc(body["expires"])
        if not isinstance(body.get("policy_digest"), str):
            return RequestStatus(None, "it predates requests bound to a policy (request again)")
    except (KeyError, TypeError, ValueError):
        return RequestStatus(None, "it is malformed")
    return RequestStatus(ApprovalRequest(body, last.document.digest, last.entry.seq, signer), None)


def request_body(
    candidate: Candidate,
    *,
    requester: TrustEntry,
    gates: list[GateResult],
    params: PromoteParams,
) -> dict[str, Any]:
    """A new request's body, binding the candidate, the expiry and the policy."""
    created = utc_now()
    expires = parse_utc(created) + timedelta(seconds=duration_seconds(params.approval_ttl))
    return {
        "kind": REQUEST_KIND,
        "model": candidate.model,
        "version": candidate.version,
        "candidate": candidate.model_digest,
        "evidence": candidate.evidence_digest,
        "requester": {"key_id": requester.key_id, "owner": requester.owner},
        "created": created,
        "expires": format_utc(expires),
        "policy": policy_of(params),
        "policy_digest": policy_digest(params),
        "gates": [
            {"gate": g.gate, "measured": g.measured, "threshold": g.threshold, "passed": g.passed}
            for g in gates
        ],
    }


def write_copy(layout: Layout, model: str, version: str, name: str, document: dict) -> Path:
    """Writes a signed document's copy into the version's approvals folder."""
    directory = layout.ensure_dir(version_dir(layout, model, version))
    atomic_write(directory / ".gitignore", f"/{WAITING_FILE}\n".encode())
    path = directory / name
    atomic_write(path, json.dumps(document, indent=1, sort_keys=True).encode() + b"\n")
    return path


def approval_file(key_id: str) -> str:
    return f"approval-{key_id}.json"


def stale_copies(layout: Layout, model: str, version: str) -> list[Path]:
    """The approval copies in the folder (by name: never opened, whatever they are)."""
    directory = version_dir(layout, model, version)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("approval-*.json"))


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


def approval_body(
    candidate: Candidate,
    request: ApprovalRequest,
    *,
    approver: TrustEntry,
    decision: str,
    reason: str,
) -> dict[str, Any]:
    """A decision's body, bound to the candidate, evidence and request."""
    if decision not in DECISION_ACTIONS:
        raise _refuse(f"unknown decision {decision!r}")
    return {
        "kind": APPROVAL_KIND,
        "model": candidate.model,
        "version": candidate.version,
        "candidate": candidate.model_digest,
        "evidence": candidate.evidence_digest,
        "request": request.digest,
        "decision": decision,
        "reason": reason,
        "approver": {"key_id": approver.key_id, "owner": approver.owner},
        "created": utc_now(),
    }


# -- a waiting Prefect run (machine-local: which flow run `aegis approve` resumes) ------


def mark_waiting(layout: Layout, model: str, version: str, flow_run_id: str) -> None:
    """Records that flow run ``flow_run_id`` waits for approvals of ``model@version``."""
    directory = layout.ensure_dir(version_dir(layout, model, version))
    body = {"flow_run_id": flow_run_id, "pid": os.getpid(), "since": utc_now()}
    atomic_write(directory / WAITING_FILE, json.dumps(body).encode())


def _waiting(layout: Layout, model: str, version: str) -> dict[str, Any] | None:
    path = version_dir(layout, model, version) / WAITING_FILE
    try:
        return read_json_object(path, check="approval", what=WAITING_FILE)
    except RefusedError:
        return None  # a planted or corrupt marker names no run


def waiting_run(layout: Layout, model: str, version: str) -> str | None:
    """The id of the flow run waiting for approvals of ``model@version``, if any.

    A marker left by a process that is gone (killed while waiting) names nothing.
    """
    data = _waiting(layout, model, version)
    try:
        run_id, pid = str(data["flow_run_id"]), int(data["pid"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except (PermissionError, OverflowError):
        pass  # alive, another user's (or an absurd pid: the run id still names it)
    return run_id


def clear_waiting(layout: Layout, model: str, version: str, flow_run_id: str) -> None:
    """Removes the waiting marker if it still names ``flow_run_id``."""
    data = _waiting(layout, model, version)
    if data is not None and data.get("flow_run_id") == flow_run_id:
        with contextlib.suppress(OSError):
            (version_dir(layout, model, version) / WAITING_FILE).unlink()
