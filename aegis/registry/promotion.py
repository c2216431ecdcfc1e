"""Promotion to ``prod``: verify, gates, a signed request, approvals, then the assignment.

``promote`` never waits: it returns ``pending`` when approvals are missing (the
``promote`` flow does the waiting, outside any lock). The assignment is one
journaled registry change (intent, GTO tags, done) that re-reads the registry,
re-verifies the release and re-runs the gates and the approval count under the
workspace lock, so a concurrent promotion, a policy change or a release
tampered with in between is seen. Evidence files are re-read only through
their signed digests. Requests and decisions are signed documents kept in
their audit entries (see :mod:`aegis.registry.approvals_store`); a request
binds the promotion policy, and a resume under another policy is refused.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aegis import vcs
from aegis.approval import GateResult, evaluate_gates, require_gates
from aegis.config import PromoteParams, policy_digest
from aegis.crypto.documents import body_digest, sign_document
from aegis.crypto.keys import PrivateKey, load_private_key
from aegis.crypto.truststore import TrustEntry
from aegis.errors import AegisError, RefusedError, StalePlanError, UsageError
from aegis.ledger import Action, Ledger
from aegis.pipeline.layout import Layout
from aegis.registry import approvals_review as review
from aegis.registry import approvals_store as store
from aegis.registry.journal import crash_point, reconcile, registry_change
from aegis.registry.tags import PROD, assign_stage, plan_stage_tags, read_registry, unassign_stage
from aegis.registry.targets import Target
from aegis.registry.verify import VerifiedRelease, open_release, read_verified, verify_release
from aegis.text import check_reason

_ATTEMPTS = 3


@dataclass
class PromotionOutcome:
    """What ``promote`` did."""

    status: str  # promoted | pending | already-prod
    model: str
    version: str
    previous_prod: str | None = None
    request: str | None = None  # workspace-relative path of the signed request
    expires: str | None = None
    approvers: list[str] = field(default_factory=list)
    required: int = 1
    gates: list[GateResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ApprovalOutcome:
    """What ``approve`` wrote."""

    model: str
    version: str
    decision: str  # approve | reject
    owner: str
    path: str
    approvers: list[str]
    required: int
    waiting_run: str | None
    notes: list[str] = field(default_factory=list)


class _Stale(Exception):
    """Prod or the tag counter changed between planning and the lock: plan again."""


def release_file(verified: VerifiedRelease, name: str) -> bytes | None:
    """A signed file of ``verified`` re-read (:func:`read_verified`); None if it has no such file.

    Raises:
        RefusedError: ``integrity`` / ``file-set``: changed or replaced since verification.
    """
    return read_verified(verified, name) if name in verified.files else None


def _release_dp(verified: VerifiedRelease) -> bool:
    from aegis.yamlio import YamlRefused, load_yaml

    data = release_file(verified, "params.yaml")
    try:
        params = load_yaml(data.decode()) if data is not None else None
        return ((params or {}).get("train") or {}).get("privacy") == "dp"
    except (YamlRefused, UnicodeDecodeError, AttributeError):
        return verified.metrics.get("epsilon_spent") is not None


def gates_for(
    verified: VerifiedRelease,
    params: PromoteParams,
    prod: VerifiedRelease | None,
    *,
    trusted_set: str | None = None,
) -> list[GateResult]:
    """The gate rows of a verified candidate against the current prod (not raising on gates).

    Raises:
        RefusedError: ``integrity``: an evidence file changed since verification.
    """
    data = release_file(verified, "validation.json")
    try:
        validation = json.loads(data) if data is not None else {}
    except (ValueError, RecursionError):
        validation = {}
    return evaluate_gates(
        metrics=verified.metrics,
        validation=validation if isinstance(validation, dict) else {},
        params=params,
        prod_metrics=prod.metrics if prod is not None else None,
        dp=_release_dp(verified) or verified.metrics.get("epsilon_spent") is not None,
        trusted_set=trusted_set,
    )


def _prod_release(ledger: Ledger, model: str, prod: str | None, version: str):
    if prod is None or prod == version:
        return None
    return open_release(ledger, Target(model=model, version=prod))


def _operator(ledger: Ledger, key_path: Path) -> tuple[PrivateKey, TrustEntry]:
    key = load_private_key(key_path)
    entry = ledger.trust.require_signer(key.key_id, role="operator", what=str(key_path), new=True)
    return key, entry


def record_request(
    ledger: Ledger,
    candidate: store.Candidate,
    operator: PrivateKey,
    requester: TrustEntry,
    gates: list[GateResult],
    params: PromoteParams,
) -> store.ApprovalRequest:
    """Signs and audits a new request (the audit entry holds it), then commits its copy.

    Copies of the superseded request's approvals are removed (by name: they
    are bound to the old request's digest and never counted for the new one).
    """
    layout = Layout.of(ledger.ws)
    model, version = candidate.model, candidate.version
    body = store.request_body(candidate, requester=requester, gates=gates, params=params)
    document = sign_document(operator, body)
    with ledger.locked():
        layout.ensure_dir(store.version_dir(layout, model, version))  # before the entry
        entry = ledger.append(
            Action.APPROVAL_REQUESTED,
            actor=operator.key_id,
            subjects={
                "model": candidate.model_digest,
                "evidence": candidate.evidence_digest,
                "request": body_digest(body),
            },
            details={
                "model_name": model, "version": version, "requester": requester.owner,
                "expires": body["expires"], "policy_digest": body["policy_digest"],
                "signed": document,
            },
        )  # fmt: skip
        removed = store.stale_copies(layout, model, version)
        for path in removed:
            path.unlink(missing_ok=True)
        path = store.write_copy(layout, model, version, store.REQUEST_FILE, document)
        paths = [path, path.parent / ".gitignore", *removed]
        _commit_copies(ledger, f"aegis: promotion request for {model}@{version}", paths)
    return store.ApprovalRequest(body, body_digest(body), entry.seq, requester)


def _commit_copies(ledger: Ledger, message: str, paths: list[Path]) -> None:
    """Commits the copies of audited documents (best effort: the audit entry is what counts)."""
    layout = Layout.of(ledger.ws)
    rels = [layout.rel(p) for p in paths]
    tracked = vcs.git(ledger.ws.root, "ls-files", "--", *rels).split()
    with contextlib.suppress(AegisError):
        ledger.commit(message, [r for r in rels if (layout.root / r).exists() or r in tracked])


def record_approval(
    ledger: Ledger,
    candidate: store.Candidate,
    request: store.ApprovalRequest,
    *,
    approver: PrivateKey,
    decision: str,
    reason: str,
) -> str:
    """Signs and audits a decision on ``request`` (the audit entry is what counts), commits a copy.

    Returns:
        The digest of the decision's signed body (its audit entry names it).

    Raises:
        RefusedError: ``approval``: see :func:`store.check_approver`, or this key
            already recorded a decision on this request.
    """
    layout = Layout.of(ledger.ws)
    model, version = candidate.model, candidate.version
    with ledger.locked():
        entry = store.check_approver(ledger.trust, approver, request, candidate)
        if ledger.decided(entry.key_id, request.digest):
            raise RefusedError(
                "approval", f"'{entry.name}' already recorded a decision on this request"
            )
        body = store.approval_body(
            candidate, request, approver=entry, decision=decision, reason=reason
        )
        document = sign_document(approver, body)
        layout.ensure_dir(store.version_dir(layout, model, version))  # before the entry
        ledger.append(
            store.DECISION_ACTIONS[decision],
            actor=approver.key_id,
            subjects={
                "model": candidate.model_digest, "evidence": candidate.evidence_digest,
                "request": request.digest, "approval": body_digest(body),
            },
            details={
                "model_name": model, "version": version, "owner": entry.owner,
                "reason": reason, "signed": document,
            },
        )  # fmt: skip
        path = store.write_copy(layout, model, version, store.approval_file(entry.key_id), document)
        _commit_copies(ledger, f"aegis: {decision} {model}@{version} ({entry.owner})", [path])
    return body_digest(body)


def usable_request(
    ledger: Ledger, candidate: store.Candidate, params: PromoteParams
) -> tuple[store.ApprovalRequest | None, str | None]:
    """The latest request if it can still be approved and completed, else (None, why).

    It must bind this candidate, not be expired, and be bound to the promotion
    policy that is in force now (the ``promote:`` section's digest).
    """
    status = store.latest_request(ledger, candidate.model, candidate.version)
    request = status.request
    if request is None:
        return None, status.unusable or "no promotion request"
    if not request.binds(candidate):
        return None, "the request names another candidate"
    if request.expired():
        return None, "the request expired"
    if any(e.subjects.get("request") == request.digest
           for e in ledger.log.scan((Action.done("promote"),), request.digest)):  # fmt: skip
        # a request is spent by the promotion it completed: promoting the version again
        # (after a rollback) needs a new request and new approvals, never the old ones
        return None, "the request was used by an earlier promotion"
    if request.policy_digest != policy_digest(params):
        return None, (
            "the promotion policy (params.yaml promote:) changed since the request "
            f"({str(request.policy_digest)[:19]} then, {policy_digest(params)[:19]} now)"
        )
    return request, None


def promote(
    ledger: Ledger, target: Target, *, operator_key_path: Path | None, resume: bool = False
) -> PromotionOutcome:
    """Promotes ``target`` to prod if it passes the gates and has enough approvals.

    Args:
        ledger: The workspace's verified ledger.
        target: ``model@vN`` (or a stage holder).
        operator_key_path: The requesting operator's private key; None completes the
            pending request an operator signed (a deployment run, holding no operator
            key: it acts as that operator, who must still be an active operator).
        resume: Complete an existing pending request (refuses if there is none valid).

    Returns:
        ``promoted``, ``pending`` (approvals missing: the request is written) or
        ``already-prod``.

    Raises:
        GateFailure: A gate failed (exit 1, rows for the table).
        RefusedError: Verification, ``approval`` (rejected; on resume: no request,
            expired, or made under another policy), ``registry`` (the version is
            marked bad) or ``signer`` (not an operator).
    """
    notes = reconcile(ledger)
    resume = resume or operator_key_path is None  # without a key, only a signed request runs
    operator = _operator(ledger, operator_key_path) if operator_key_path else None
    verified = open_release(ledger, target)
    candidate = store.Candidate.of(verified)
    model, version = candidate.model, candidate.version
    params = ledger.ws.params().promote
    state = read_registry(ledger, model)
    if state.prod == version:
        return PromotionOutcome("already-prod", model, version, version, notes=notes)
    if version in state.bad:
        raise RefusedError(
            "registry", f"{model}@{version} is marked bad (rolled back from); release anew"
        )
    request, why = usable_request(ledger, candidate, params)
    if resume and request is None:  # before the gates: a resume under another policy is refused
        raise RefusedError("approval", f"{model}@{version}: {why}; run `aegis promote` first")
    prod = _prod_release(ledger, model, state.prod, version)
    trusted = ledger.ws.params().evaluate.trusted_set
    gates = require_gates(gates_for(verified, params, prod, trusted_set=trusted))
    if request is None:
        rejected = review.standing_rejection(ledger, candidate)
        if rejected is not None:
            raise RefusedError(
                "approval",
                f"{model}@{version} was rejected by {rejected.owner}: "
                f"{rejected.reason or 'no reason given'}; a rejected build is not requested "
                "again (release anew)",
            )
        assert operator is not None  # a resume without a request was refused above
        request = record_request(ledger, candidate, *operator, gates, params)
    actor = operator[0].key_id if operator else _requester(ledger, request)
    tally = _tally(ledger, candidate, request)
    outcome = PromotionOutcome(
        "pending", model, version, state.prod, Layout.of(ledger.ws).rel(
            store.version_dir(Layout.of(ledger.ws), model, version) / store.REQUEST_FILE),
        request.expires, list(tally.approvers), tally.required, gates, notes + tally.ignored,
    )  # fmt: skip
    if not tally.enough:
        return outcome
    previous, rechecked, outcome.status = _assign(ledger, verified, request, actor, prod)
    outcome.previous_prod, outcome.gates = previous, rechecked or gates
    return outcome


def _requester(ledger: Ledger, request: store.ApprovalRequest) -> str:
    """The key id of the operator who signed ``request``, if still an active operator."""
    entry = ledger.trust.require_signer(
        request.requester_key, role="operator", what="the promotion request", new=True
    )
    return entry.key_id


def _tally(ledger: Ledger, candidate, request) -> review.ApprovalTally:
    """This request's approvals; refused if it, or any request for the build, was rejected."""
    tally = review.count_approvals(ledger, candidate, request)
    if tally.rejected_by:
        owner, reason = tally.rejected_by[0]
        raise RefusedError("approval", f"rejected by {owner}: {reason or 'no reason given'}")
    standing = review.standing_rejection(ledger, candidate, other_than=request)
    if standing is not None:
        raise RefusedError(
            "approval",
            f"rejected by {standing.owner} (an earlier request): "
            f"{standing.reason or 'no reason given'}",
        )
    return tally


def _assign(
    ledger: Ledger, verified, request, actor: str, prod
) -> tuple[str | None, list[GateResult], str]:
    """Assigns prod under the lock, re-checking prod, release, policy, gates and approvals.

    Plans again if prod or the tag counter changed between planning and the lock.
    """
    ws = ledger.ws
    candidate = store.Candidate.of(verified)
    model, version = candidate.model, candidate.version
    for _ in range(_ATTEMPTS):
        state = read_registry(ledger, model)
        previous = state.prod
        if previous == version:
            return previous, [], "already-prod"
        if (prod.version if prod else None) != previous:
            prod = _prod_release(ledger, model, previous, version)
        ops = [(PROD, False)] + ([(PROD, True)] if previous else [])
        planned = plan_stage_tags(ws, model=model, ops=ops)
        holders = [version] + ([previous] if previous else [])
        commits = dict(zip(planned, _commits_of(state, holders), strict=True))
        try:
            with registry_change(
                ledger, action="promote", actor=actor, tags=planned, commits=commits,
                subjects={"model": candidate.model_digest, "evidence": candidate.evidence_digest,
                          "request": request.digest},
                details={"model_name": model, "version": version, "previous_prod": previous},
            ) as change:  # fmt: skip
                if read_registry(ledger, model).prod != previous or planned != plan_stage_tags(
                    ws, model=model, ops=ops
                ):
                    raise _Stale
                again = verify_release(ledger, verified.directory, expect=verified.target)
                if store.Candidate.of(again) != candidate:
                    raise RefusedError(
                        "integrity", f"{model}@{version} is another build than the one verified"
                    )
                params = ws.params().promote
                if request.policy_digest != policy_digest(params):
                    raise RefusedError(
                        "approval",
                        "the promotion policy changed during the promotion; request again",
                    )
                trusted = ws.params().evaluate.trusted_set
                gates = require_gates(gates_for(again, params, prod, trusted_set=trusted))
                tally = _tally(ledger, candidate, request)
                if not tally.enough:
                    raise RefusedError("approval", f"{tally.missing} approval(s) missing")
                message = change.message(
                    f"promote {model}@{version}: approved by {', '.join(tally.approvers)}"
                )
                assign_stage(ws, model=model, version=version, stage=PROD, message=message)
                crash_point("promote.assign")
                if previous:
                    unassign_stage(ws, model=model, version=previous, stage=PROD, message=message)
                    crash_point("promote.unassign")
                change.details.update({"approvers": tally.approvers, "previous_prod": previous})
            return previous, gates, "promoted"
        except (_Stale, StalePlanError):
            continue
    raise RefusedError("registry", f"{model}: prod kept changing during the promotion; try again")


def _commits_of(state, versions: list[str]) -> list[str]:
    return [state.get(v).commit for v in versions]


def approve(
    ledger: Ledger,
    target: Target,
    *,
    approver_key_path: Path,
    reject: bool = False,
    reason: str = "",
) -> ApprovalOutcome:
    """Records a signed approval (or rejection) of the pending request for ``target``.

    Raises:
        RefusedError: Verification of the release, or ``approval``: no usable
            request (none, expired, another candidate, another policy), not a
            current approver, the requester's owner, a decision already recorded.
        UsageError: ``reject`` without a reason.
    """
    reason = check_reason(reason)
    if reject and not reason:
        raise UsageError("--reject needs --reason")
    notes = reconcile(ledger)
    approver = load_private_key(approver_key_path)
    verified = open_release(ledger, target)
    candidate = store.Candidate.of(verified)
    model, version = candidate.model, candidate.version
    status = store.latest_request(ledger, model, version)
    if status.request is None:
        why = status.unusable or "no promotion request"
        raise RefusedError("approval", f"{model}@{version}: {why} (run `aegis promote` first)")
    request = status.request
    if request.binds(candidate) and not request.expired():
        _, why = usable_request(ledger, candidate, ledger.ws.params().promote)
        if why is not None:
            raise RefusedError("approval", f"{model}@{version}: {why}; the operator requests again")
    decision = "reject" if reject else "approve"
    record_approval(ledger, candidate, request, approver=approver, decision=decision, reason=reason)
    tally = review.count_approvals(ledger, candidate, request)
    owner = ledger.trust.by_key_id(approver.key_id).owner  # type: ignore[union-attr]
    layout = Layout.of(ledger.ws)
    path = store.version_dir(layout, model, version) / store.approval_file(approver.key_id)
    return ApprovalOutcome(
        model, version, decision, owner, layout.rel(path), tally.approvers,
        tally.required, store.waiting_run(layout, model, version), notes,
    )  # fmt: skip
