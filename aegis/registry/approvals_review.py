"""Which decisions count: signature, binding, key status, owner, time window.

Decisions are read from the audit log only (see :mod:`aegis.registry.approvals_store`).
An approval (or rejection) counts only if

- its audit entry holds a document whose signature verifies against the
  key that is the entry's actor (the ledger checks this);
- it is bound to this candidate, evidence digest and request;
- its signer is an approver whose owner is not the requester's;
- the key is active, or retired by an audited ``trust.retire`` entry that comes
  after that decision entry (revoked keys never count);
- its ``created`` lies within the request's ``created`` .. ``expires``.

Anything else is ignored with its reason (it neither counts nor blocks the
promotion), and so is any file in the approvals folder: ``aegis status``
names files without an audited decision as ignored, without opening them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aegis.ledger import Ledger, SignedEntry
from aegis.pipeline.layout import Layout
from aegis.registry import approvals_store as store
from aegis.timeutil import parse_utc


@dataclass(frozen=True)
class Verdict:
    """One recorded decision, judged."""

    who: str  # "name (owner)" of the signing key
    owner: str
    key_id: str
    decision: str  # approve | reject
    reason: str  # the approver's reason
    seq: int  # its audit entry
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
    ignored: list[str] = field(default_factory=list)  # "<who>: ignored: <why>"

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
    ledger: Ledger,
    signed: SignedEntry,
    candidate: store.Candidate,
    request: store.ApprovalRequest,
) -> Verdict:
    body, entry = signed.body, signed.signer
    decision = str(body.get("decision"))

    def verdict(why: str | None) -> Verdict:
        who = f"{entry.name} ({entry.owner})"
        reason = str(body.get("reason", ""))
        return Verdict(who, entry.owner, entry.key_id, decision, reason, signed.entry.seq, why)

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
    if store.DECISION_ACTIONS.get(decision) != signed.entry.action:
        return verdict(f"decision {decision!r} does not match its audit entry")
    if not _within(body.get("created"), request):
        return verdict("created outside the request's lifetime (backdated?)")
    if entry.status == "retired":
        retired = ledger.retired_at(entry.key_id)
        if retired is None or signed.entry.seq > retired:
            return verdict("recorded after its key was retired")
    elif entry.status != "active":
        return verdict(f"its key is {entry.status}")
    return verdict(None)


def review_decisions(
    ledger: Ledger, candidate: store.Candidate, request: store.ApprovalRequest
) -> list[Verdict]:
    """Judges every audited decision on ``request`` (see the module docstring)."""
    return [_judge(ledger, s, candidate, request) for s in ledger.decisions(request.digest)]


def unaudited_files(
    layout: Layout, candidate: store.Candidate, verdicts: list[Verdict]
) -> list[str]:
    """Names of approval files in the folder that no audited decision stands behind."""
    audited = {store.approval_file(v.key_id) for v in verdicts}
    return [
        f"{p.name}: ignored: no audited decision (planted, or of an earlier request)"
        for p in store.stale_copies(layout, candidate.model, candidate.version)
        if p.name not in audited
    ]


def standing_rejection(
    ledger: Ledger, candidate: store.Candidate, *, other_than: store.ApprovalRequest | None = None
) -> Verdict | None:
    """A rejection that counts, of any request for this candidate: it stands for the build.

    A new request (another policy, a renewed expiry) never erases it: the way
    on after a rejection is a new release. ``other_than``: a request whose
    decisions the caller has judged already (not reviewed twice).
    """
    skip = other_than.digest if other_than is not None else None
    for request in store.all_requests(ledger, candidate.model, candidate.version):
        if request.digest == skip or not request.binds(candidate):
            continue
        for verdict in review_decisions(ledger, candidate, request):
            if verdict.ignored is None and verdict.decision == "reject":
                return verdict
    return None


def count_approvals(
    ledger: Ledger, candidate: store.Candidate, request: store.ApprovalRequest
) -> ApprovalTally:
    """Judges every audited decision and counts distinct owners (never raises on one).

    The number required is the request's bound policy's ``approvals_required``.
    """
    tally = ApprovalTally(required=request.approvals_required)
    for verdict in review_decisions(ledger, candidate, request):
        if verdict.ignored is not None:
            tally.ignored.append(verdict.note)
        elif verdict.decision == "reject":
            tally.rejected_by.append((verdict.owner, verdict.reason))
        elif verdict.owner not in tally.approvers:
            tally.approvers.append(verdict.owner)
    return tally
