"""Which approval files count: signature, binding, audit entry, key status, time window.

A signed file alone proves little: its ``created`` is written by its signer,
and anyone who can write the approvals directory can plant files there. An
approval (or rejection) counts only if

- its signature verifies against a key in the trust store, named by its file;
- it is bound to this candidate, evidence digest and request;
- its signer is an approver whose owner is not the requester's;
- the audit log holds its ``approval.granted`` (``approval.rejected``) entry by
  the same key, naming the file's body digest and the request digest;
- the key is active, or retired by an audited ``trust.retire`` entry that comes
  after that decision entry (revoked keys never count);
- its ``created`` lies within the request's ``created`` .. ``expires``.

Any other file is ignored with its reason (it neither counts nor blocks the
promotion); ``aegis status`` shows it as ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aegis.audit import AuditEntry
from aegis.config import PromoteParams
from aegis.crypto.truststore import TrustStore
from aegis.errors import RefusedError
from aegis.registry import approvals_store as store
from aegis.timeutil import parse_utc
from aegis.workspace import Workspace


@dataclass(frozen=True)
class Verdict:
    """One approval file, judged."""

    file: str
    who: str  # "name (owner)" of the signing key, or the file name when unknown
    owner: str | None  # the signer's owner (from the trust store), if the signature verified
    decision: str | None  # approve | reject
    reason: str  # the approver's reason
    ignored: str | None = None  # why it does not count; None: it counts

    @property
    def note(self) -> str:
        return f"{self.who}: ignored: {self.ignored}"


@dataclass
class ApprovalTally:
    """Approvals counted for one request: distinct approver owners."""

    required: int
    approvers: list[str] = field(default_factory=list)  # distinct owners who approved
    rejected_by: list[tuple[str, str]] = field(default_factory=list)  # (owner, reason)
    ignored: list[str] = field(default_factory=list)  # "<who>: ignored: <why>" per file

    @property
    def missing(self) -> int:
        return max(self.required - len(self.approvers), 0)

    @property
    def enough(self) -> bool:
        return not self.rejected_by and self.missing == 0


def _within(created: object, request: store.ApprovalRequest) -> bool:
    try:
        when = parse_utc(str(created))
        return parse_utc(request.body["created"]) <= when <= parse_utc(request.expires)
    except (KeyError, TypeError, ValueError):
        return False


def _judge(
    path: Path,
    candidate: store.Candidate,
    request: store.ApprovalRequest,
    trust: TrustStore,
    entries: list[AuditEntry],
) -> Verdict:
    try:
        approval, entry = store.read_approval(path, trust)
    except RefusedError as exc:
        why = exc.detail.removeprefix(f"{path.parent.name}/{path.name}: ").removeprefix(
            f"{path.name}: "
        )
        return Verdict(path.name, path.name, None, None, "", why)
    body = approval.body
    decision = body.get("decision")

    def verdict(why: str | None) -> Verdict:
        who = f"{entry.name} ({entry.owner})"
        return Verdict(path.name, who, entry.owner, str(decision), approval.reason, why)

    bound = tuple(body.get(k) for k in ("model", "version", "candidate", "evidence", "request"))
    expected = (
        candidate.model, candidate.version, candidate.model_digest, candidate.evidence_digest,
        request.digest,
    )  # fmt: skip
    if bound != expected:
        return verdict("bound to another candidate, evidence digest or request (replayed)")
    if entry.role != "approver":
        return verdict(f"signed by a {entry.role} key, not an approver's")
    if entry.status == "revoked":
        return verdict("its key is revoked")
    if entry.owner == request.requester_owner:
        return verdict(f"approver owner '{entry.owner}' is the requester's (two-person rule)")
    if decision not in store.DECISION_ACTIONS:
        return verdict(f"unknown decision {decision!r}")
    if not _within(body.get("created"), request):
        return verdict("created outside the request's lifetime (backdated?)")
    audited = next(
        (
            e
            for e in entries
            if e.action == store.DECISION_ACTIONS[decision]
            and e.actor == entry.key_id
            and e.subjects.get("approval") == approval.digest
            and e.subjects.get("request") == request.digest
        ),
        None,
    )
    if audited is None:
        return verdict("no audit entry records this decision (planted or unaudited file)")
    if entry.status == "retired":
        retired = next(
            (
                e.seq
                for e in entries
                if e.action == "trust.retire" and e.details.get("key_id") == entry.key_id
            ),
            None,
        )
        if retired is None or audited.seq > retired:
            return verdict("recorded after its key was retired")
    elif entry.status != "active":
        return verdict(f"its key is {entry.status}")
    return verdict(None)


def review_approvals(
    ws: Workspace,
    candidate: store.Candidate,
    request: store.ApprovalRequest,
    *,
    trust: TrustStore | None = None,
    entries: list[AuditEntry] | None = None,
) -> list[Verdict]:
    """Judges every approval file of ``candidate``'s version (see the module docstring).

    Args:
        ws: The workspace.
        candidate: The verified release the request is for.
        request: The verified request.
        trust: The trust store (loaded if not given).
        entries: The audit log's entries (read if not given; the caller verifies it).
    """
    trust = ws.trust() if trust is None else trust
    entries = ws.audit().entries() if entries is None else entries
    directory = store.version_dir(ws, candidate.model, candidate.version)
    return [
        _judge(path, candidate, request, trust, entries)
        for path in sorted(directory.glob("approval-*.json"))
    ]


def count_approvals(
    ws: Workspace,
    candidate: store.Candidate,
    request: store.ApprovalRequest,
    params: PromoteParams,
) -> ApprovalTally:
    """Verifies the audit log, judges every approval file and counts distinct owners.

    Files that do not count are listed in ``ignored`` (never raised).

    Raises:
        RefusedError: ``audit``: the audit log does not verify.
    """
    ws.verify_audit()
    tally = ApprovalTally(required=params.approvals_required)
    for verdict in review_approvals(ws, candidate, request):
        if verdict.ignored is not None:
            tally.ignored.append(verdict.note)
        elif verdict.decision == "reject":
            tally.rejected_by.append((str(verdict.owner), verdict.reason))
        elif verdict.owner not in tally.approvers:
            tally.approvers.append(str(verdict.owner))
    return tally
