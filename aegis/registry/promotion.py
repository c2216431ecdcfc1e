"""Promotion to ``prod``: verify, gates, a signed request, approvals, then the assignment.

``promote`` never waits: it returns ``pending`` when approvals are missing (the
``promote`` flow does the waiting, outside any lock). The assignment is one
journaled registry change (intent, GTO tags, done) that re-reads the registry,
re-verifies the release and re-runs the gates and the approval count under the
workspace lock, so a concurrent promotion, a policy change or a release
tampered with in between is seen. Evidence files are re-read only through
their signed digests. A request or approval whose commit or audit entry fails
is removed again: a file on disk without its audit entry never counts.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aegis import vcs
from aegis.approval import GateResult, evaluate_gates, require_gates
from aegis.config import PromoteParams, duration_seconds
from aegis.crypto.keys import PrivateKey, load_private_key
from aegis.errors import RefusedError, UsageError
from aegis.fileutil import atomic_write
from aegis.registry import approvals_review as review
from aegis.registry import approvals_store as store
from aegis.registry.journal import crash_point, reconcile, registry_change
from aegis.registry.tags import PROD, assign_stage, plan_stage_tags, read_registry, unassign_stage
from aegis.registry.targets import Target
from aegis.registry.verify import VerifiedRelease, open_release, read_verified, verify_release
from aegis.workspace import Workspace

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
    data = release_file(verified, "params.yaml")
    try:
        params = yaml.safe_load(data) if data is not None else None
        return ((params or {}).get("train") or {}).get("privacy") == "dp"
    except (yaml.YAMLError, AttributeError):
        return verified.metrics.get("epsilon_spent") is not None


def gates_for(
    verified: VerifiedRelease, params: PromoteParams, prod: VerifiedRelease | None
) -> list[GateResult]:
    """The gate rows of a verified candidate against the current prod (not raising on gates).

    Raises:
        RefusedError: ``integrity``: an evidence file changed since verification.
    """
    data = release_file(verified, "validation.json")
    try:
        validation = json.loads(data) if data is not None else {}
    except ValueError:
        validation = {}
    return evaluate_gates(
        metrics=verified.metrics,
        validation=validation if isinstance(validation, dict) else {},
        params=params,
        prod_metrics=prod.metrics if prod is not None else None,
        dp=_release_dp(verified) or verified.metrics.get("epsilon_spent") is not None,
    )


def _prod_release(ws: Workspace, model: str, prod: str | None, version: str):
    if prod is None or prod == version:
        return None
    return open_release(ws, Target(model=model, version=prod))


def _operator(ws: Workspace, key_path: Path) -> tuple[PrivateKey, object]:
    key = load_private_key(key_path)
    entry = ws.trust().require_signer(key.key_id, role="operator", what=str(key_path), new=True)
    return key, entry


def _rel(ws: Workspace, path: Path) -> str:
    return str(path.relative_to(ws.root))


def _tracked(ws: Workspace, paths: list[Path]) -> list[str]:
    rels = [_rel(ws, p) for p in paths]
    return [r for r in rels if vcs.git(ws.root, "ls-files", "--", r).strip()]


def _undo(ws: Workspace, path: Path, previous: bytes | None, what: str) -> None:
    """Puts ``path`` back as it was (``previous`` bytes, or absent) after a failed write.

    A commit of the new file that went through is followed by one restoring it
    (best effort: the file on disk is what counts, and it is back already).
    """
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, previous)
    with contextlib.suppress(Exception):
        tracked = _tracked(ws, [path])
        if tracked:
            vcs.commit_paths(ws.root, f"aegis: undo {what} (not recorded)", tracked)


def record_request(ws, candidate, operator, requester, gates, params) -> store.ApprovalRequest:
    """Writes, commits and audits a new request; then drops the superseded approvals.

    If the commit or the audit entry fails, the earlier request is put back (and
    its approvals were never touched).
    """
    with ws.lock():
        path = store.request_path(ws, candidate.model, candidate.version)
        previous = path.read_bytes() if path.is_file() else None
        request = store.write_request(
            ws, candidate, operator=operator, requester=requester, gates=gates,
            ttl_seconds=duration_seconds(params.approval_ttl),
        )  # fmt: skip
        try:
            vcs.commit_paths(
                ws.root, f"aegis: promotion request for {candidate.model}@{candidate.version}",
                [_rel(ws, path), _rel(ws, path.parent / ".gitignore")],
            )  # fmt: skip
            ws.audit().append(
                actor=operator.key_id,
                action="approval.requested",
                pipeline_key=ws.pipeline_key(),
                subjects={
                    "model": candidate.model_digest,
                    "evidence": candidate.evidence_digest,
                    "request": request.digest,
                },
                details={
                    "model_name": candidate.model,
                    "version": candidate.version,
                    "requester": requester.owner,
                    "expires": request.expires,
                },
            )
        except BaseException:
            _undo(ws, path, previous, f"promotion request for {candidate.model}")
            raise
        removed = _tracked(ws, store.drop_superseded(ws, request))
        if removed:
            vcs.commit_paths(
                ws.root, f"aegis: drop the approvals of the superseded request for "
                f"{candidate.model}@{candidate.version}", removed,
            )  # fmt: skip
    return request


def record_approval(
    ws: Workspace,
    candidate: store.Candidate,
    request: store.ApprovalRequest,
    *,
    approver: PrivateKey,
    decision: str,
    reason: str,
) -> store.Approval:
    """Writes, commits and audits a signed decision (see :func:`store.write_approval`).

    The audit entry names the approval's body digest: that entry is what makes
    the file count. If the commit or the audit entry fails, the file is removed.
    """
    model, version = candidate.model, candidate.version
    with ws.lock():
        approval = store.write_approval(
            ws, candidate, request, approver=approver, decision=decision, reason=reason
        )
        try:
            vcs.commit_paths(
                ws.root, f"aegis: {decision} {model}@{version} ({approval.owner})",
                [_rel(ws, approval.path)],
            )  # fmt: skip
            ws.audit().append(
                actor=approver.key_id,
                action=store.DECISION_ACTIONS[decision],
                pipeline_key=ws.pipeline_key(),
                subjects={
                    "model": candidate.model_digest, "evidence": candidate.evidence_digest,
                    "request": request.digest, "approval": approval.digest,
                },
                details={
                    "model_name": model, "version": version, "owner": approval.owner,
                    "reason": reason,
                },
            )  # fmt: skip
        except BaseException:
            _undo(ws, approval.path, None, f"{decision} of {model}@{version}")
            raise
    return approval


def promote(
    ws: Workspace, target: Target, *, operator_key_path: Path, resume: bool = False
) -> PromotionOutcome:
    """Promotes ``target`` to prod if it passes the gates and has enough approvals.

    Args:
        ws: The workspace.
        target: ``model@vN`` (or a stage holder).
        operator_key_path: The requesting operator's private key.
        resume: Complete an existing pending request (refuses if there is none valid).

    Returns:
        ``promoted``, ``pending`` (approvals missing: the request is written) or
        ``already-prod``.

    Raises:
        GateFailure: A gate failed (exit 1, rows for the table).
        RefusedError: Verification, ``approval`` (rejected, expired on resume,
            tampered or replayed approval files), ``registry`` (the version is marked
            bad) or ``signer`` (not an operator).
    """
    notes = reconcile(ws)
    operator, requester = _operator(ws, operator_key_path)
    verified = open_release(ws, target)
    candidate = store.Candidate.of(verified)
    model, version = candidate.model, candidate.version
    params = ws.params().promote
    state = read_registry(ws, model)
    if state.prod == version:
        return PromotionOutcome("already-prod", model, version, version, notes=notes)
    if version in state.bad:
        raise RefusedError(
            "registry", f"{model}@{version} is marked bad (rolled back from); release anew"
        )
    prod = _prod_release(ws, model, state.prod, version)
    gates = require_gates(gates_for(verified, params, prod))
    request = store.load_request(ws, model, version)
    usable = request is not None and request.binds(candidate) and not request.expired()
    if resume and not usable:
        why = (
            "no promotion request"
            if request is None
            else "the request expired"
            if request.binds(candidate)
            else "the request names another candidate"
        )
        raise RefusedError("approval", f"{model}@{version}: {why}; run `aegis promote` first")
    if not usable:
        request = record_request(ws, candidate, operator, requester, gates, params)
    tally = _tally(ws, candidate, request, params)
    outcome = PromotionOutcome(
        "pending", model, version, state.prod, _rel(ws, request.path), request.expires,
        list(tally.approvers), tally.required, gates, notes + tally.ignored,
    )  # fmt: skip
    if not tally.enough:
        return outcome
    previous, rechecked, outcome.status = _assign(ws, verified, request, operator, prod)
    outcome.previous_prod, outcome.gates = previous, rechecked or gates
    return outcome


def _tally(ws, candidate, request, params) -> review.ApprovalTally:
    tally = review.count_approvals(ws, candidate, request, params)
    if tally.rejected_by:
        owner, reason = tally.rejected_by[0]
        raise RefusedError("approval", f"rejected by {owner}: {reason or 'no reason given'}")
    return tally


def _assign(ws, verified, request, operator, prod) -> tuple[str | None, list[GateResult], str]:
    """Assigns prod under the lock, re-checking prod, release, gates and approvals.

    Retries if prod changed between planning and the lock.
    """
    candidate = store.Candidate.of(verified)
    model, version = candidate.model, candidate.version
    for _ in range(_ATTEMPTS):
        previous = read_registry(ws, model).prod
        if previous == version:
            return previous, [], "already-prod"
        if (prod.version if prod else None) != previous:
            prod = _prod_release(ws, model, previous, version)
        ops = [(PROD, False)] + ([(PROD, True)] if previous else [])
        planned = plan_stage_tags(ws, model=model, ops=ops)
        entered = False
        try:
            with registry_change(
                ws, action="promote", actor=operator.key_id, tags=planned,
                subjects={"model": candidate.model_digest, "evidence": candidate.evidence_digest,
                          "request": request.digest},
                details={"model_name": model, "version": version, "previous_prod": previous},
            ) as change:  # fmt: skip
                entered = True
                if read_registry(ws, model).prod != previous or planned != plan_stage_tags(
                    ws, model=model, ops=ops
                ):
                    raise _Stale
                again = verify_release(ws, verified.directory, expect=verified.target)
                if store.Candidate.of(again) != candidate:
                    raise RefusedError(
                        "integrity", f"{model}@{version} is another build than the one verified"
                    )
                params = ws.params().promote
                gates = require_gates(gates_for(again, params, prod))
                tally = _tally(ws, candidate, request, params)
                if not tally.enough:
                    raise RefusedError("approval", f"{tally.missing} approval(s) missing")
                message = f"promote {model}@{version}: approved by {', '.join(tally.approvers)}"
                assign_stage(ws, model=model, version=version, stage=PROD, message=message)
                crash_point("promote.assign")
                if previous:
                    unassign_stage(ws, model=model, version=previous, stage=PROD, message=message)
                    crash_point("promote.unassign")
                change.details.update({"approvers": tally.approvers, "previous_prod": previous})
            return previous, gates, "promoted"
        except _Stale:
            continue
        except RefusedError as exc:  # the journal saw our planned tags taken: plan again
            if entered or exc.check != "registry":
                raise
    raise RefusedError("registry", f"{model}: prod kept changing during the promotion; try again")


def approve(
    ws: Workspace,
    target: Target,
    *,
    approver_key_path: Path,
    reject: bool = False,
    reason: str = "",
) -> ApprovalOutcome:
    """Writes a signed approval (or rejection) of the pending request for ``target``.

    Raises:
        RefusedError: Verification of the release, or ``approval``: no request, not a
            current approver, the requester's owner, an expired request, a request
            for another candidate, a decision already recorded.
        UsageError: ``reject`` without a reason.
    """
    if reject and not reason.strip():
        raise UsageError("--reject needs --reason")
    notes = reconcile(ws)
    approver = load_private_key(approver_key_path)
    verified = open_release(ws, target)
    candidate = store.Candidate.of(verified)
    model, version = candidate.model, candidate.version
    request = store.load_request(ws, model, version)
    if request is None:
        raise RefusedError(
            "approval", f"{model}@{version}: no promotion request (run `aegis promote` first)"
        )
    decision = "reject" if reject else "approve"
    approval = record_approval(
        ws, candidate, request, approver=approver, decision=decision, reason=reason
    )
    tally = review.count_approvals(ws, candidate, request, ws.params().promote)
    return ApprovalOutcome(
        model, version, decision, approval.owner, _rel(ws, approval.path), tally.approvers,
        tally.required, store.waiting_run(ws, model, version), notes,
    )  # fmt: skip
