"""Signed approval requests and approvals in ``.aegis/approvals/<model>/<version>/``.

See :mod:`aegis.approval` for the policy. Every read verifies the signature
against the trust store; every refusal is ``RefusedError("approval", ...)``
(exit 1) naming what is wrong. Writes here do not commit or audit: the
caller (:mod:`aegis.registry.promotion`) does both under the workspace lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aegis.approval import GateResult
from aegis.config import PromoteParams
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


@dataclass
class ApprovalTally:
    """Approvals counted for one request: distinct approver owners."""

    required: int
    approvers: list[str] = field(default_factory=list)  # distinct owners who approved
    rejected_by: list[tuple[str, str]] = field(default_factory=list)  # (owner, reason)
    ignored: list[str] = field(default_factory=list)  # why a signed file did not count

    @property
    def missing(self) -> int:
        return max(self.required - len(self.approvers), 0)

    @property
    def enough(self) -> bool:
        return not self.rejected_by and self.missing == 0


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


def write_request(
    ws: Workspace,
    candidate: Candidate,
    *,
    operator: PrivateKey,
    requester: TrustEntry,
    gates: list[GateResult],
    ttl_seconds: int,
) -> ApprovalRequest:
    """Signs and writes a new request, dropping the approvals of any earlier one.

    Returns:
        The request. The caller commits the version directory (git keeps the old files).
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
    for old in directory.glob("approval-*.json"):
        old.unlink()
    atomic_write(directory / ".gitignore", f"/{WAITING_FILE}\n".encode())
    atomic_write(directory / REQUEST_FILE, _signed(operator, body))
    return ApprovalRequest(directory / REQUEST_FILE, body, body_digest(body))


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

    Raises:
        RefusedError: ``approval``: see :func:`check_approver`; or this key already
            recorded a decision on this request.
    """
    trust = ws.trust()
    entry = check_approver(trust, approver, request, candidate)
    path = _approval_path(ws, candidate.model, candidate.version, approver.key_id)
    if path.exists():
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


def count_approvals(
    ws: Workspace, candidate: Candidate, request: ApprovalRequest, params: PromoteParams
) -> ApprovalTally:
    """Verifies every approval file of the version and counts distinct approver owners.

    Approvals by keys revoked since, or retired before they signed, do not count
    (listed in ``ignored``).

    Raises:
        RefusedError: ``approval``: a tampered or unsigned file, an approval bound to
            another candidate, evidence digest or request (replayed), or one by the
            requester's owner.
    """
    trust = ws.trust()
    tally = ApprovalTally(required=params.approvals_required)
    directory = version_dir(ws, candidate.model, candidate.version)
    for path in sorted(directory.glob("approval-*.json")):
        body, entry = _read_signed(path, trust, APPROVAL_KIND)
        where = f"{candidate.model}/{candidate.version}/{path.name}"
        bound = (
            body.get("model"),
            body.get("version"),
            body.get("candidate"),
            body.get("evidence"),
            body.get("request"),
        )
        expected = (
            candidate.model,
            candidate.version,
            candidate.model_digest,
            candidate.evidence_digest,
            request.digest,
        )
        if bound != expected:
            raise _refuse(f"{where}: bound to another candidate, digest or request (replayed)")
        if (
            path.name != f"approval-{entry.key_id}.json"
            or body.get("approver", {}).get("key_id") != entry.key_id
        ):
            raise _refuse(f"{where}: approver does not match the signing key")
        if entry.owner == request.requester_owner:
            raise _refuse(f"{where}: approver owner '{entry.owner}' is the requester's owner")
        signed_before_retired = entry.status == "retired" and str(body.get("created")) < (
            entry.changed_at or ""
        )
        if entry.role != "approver" or not (entry.status == "active" or signed_before_retired):
            tally.ignored.append(f"{entry.name}: {entry.role}, {entry.status}")
            continue
        if body.get("decision") == "reject":
            tally.rejected_by.append((entry.owner, str(body.get("reason", ""))))
        elif body.get("decision") == "approve":
            if entry.owner not in tally.approvers:
                tally.approvers.append(entry.owner)
        else:
            raise _refuse(f"{where}: unknown decision {body.get('decision')!r}")
    return tally


def list_decisions(ws: Workspace, model: str, version: str) -> list[dict[str, Any]]:
    """Bodies of the approval files (unverified; for display such as ``aegis status``)."""
    out = []
    for path in sorted(version_dir(ws, model, version).glob("approval-*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            out.append(json.loads(path.read_text())["body"])
    return out


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
