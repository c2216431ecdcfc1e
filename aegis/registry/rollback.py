"""Verified rollback: move ``prod`` back to an earlier production version.

The target is the latest earlier prod holder marked neither bad nor suspect (or
the one ``--to`` names, which must have held prod before: a rollback never
bypasses promotion). It is fetched from the DVC store if needed and verified
(signature, signer, every file's hash, registry and dataset evidence) before
anything changes; a target that fails is refused and production is untouched.

The change itself is one journaled registry change (see ``journal``): assign
``prod`` to the target, unassign it from the current holder, mark the current
holder ``bad`` (an operator's rollback) or ``suspect`` (the production monitor's: it
acts on statistics over traffic, so it cannot condemn a version; an operator decides).
Crash points: ``rollback.intent``, ``rollback.assign``,
``rollback.unassign``, ``rollback.mark-bad``, ``rollback.done``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from aegis.errors import RefusedError, UsageError
from aegis.ledger import Ledger
from aegis.registry import journal
from aegis.registry import tags as registry_tags
from aegis.registry.rollback_request import RollbackRequest
from aegis.registry.targets import Target, check_model_name
from aegis.text import check_reason
from aegis.workspace import Workspace


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback will do, decided before verification."""

    model: str
    from_version: str
    to_version: str
    actor: str
    reason: str
    request: str | None = None  # digest of the operator-signed request it runs (a deployment)
    mark: str = registry_tags.BAD  # what the version rolled back from becomes
    evidence: dict | None = None  # a monitor rollback: the incident id and its windows


@dataclass(frozen=True)
class RollbackOutcome:
    """A completed rollback."""

    model: str
    from_version: str
    to_version: str
    from_model_digest: str | None
    from_evidence_digest: str | None
    to_model_digest: str
    to_evidence_digest: str
    actor: str
    reason: str
    audit_seq: int  # the rollback.done entry
    tags: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reconciled: list[str] = field(default_factory=list)
    mark: str = registry_tags.BAD  # what from_version became


def released_digests(ledger: Ledger, model: str, version: str) -> dict[str, str]:
    """The digests the audit log recorded when ``model@version`` was released.

    Read from the verified audit log rather than the release directory, so
    the digests of a tampered or missing release are still the true ones.
    Returns an empty dict if no ``release.created`` entry names the version.
    """
    record = ledger.release(model, version)
    if record is None:
        return {}
    found = {"model": record.model_digest, "evidence": record.evidence_digest}
    return {k: v for k, v in found.items() if v}


def _only_model(ledger: Ledger) -> str:
    names = registry_tags.models(ledger.ws)
    if len(names) == 1:
        return names[0]
    if not names:
        raise RefusedError("rollback", "no model is registered")
    raise UsageError(f"several models are registered ({', '.join(names)}): give --to or --model")


def plan_rollback(
    ledger: Ledger,
    *,
    to: Target | None,
    reason: str,
    operator_key_path: Path | None,
    model: str | None = None,
    request: RollbackRequest | None = None,
    monitor_key_path: Path | None = None,
    evidence: dict | None = None,
) -> RollbackPlan:
    """Decides the rollback: who, from which prod version, to which version.

    Args:
        ledger: The workspace's verified ledger.
        to: The target version (``name@vN``), or None for the latest earlier
            prod version not marked bad.
        reason: Why (required; audited).
        operator_key_path: An active operator key (the actor).
        model: The model, when ``to`` is None and several are registered.
        request: A verified operator-signed request (instead of a key): its
            operator is the actor (:mod:`aegis.registry.rollback_request`).
        monitor_key_path: A monitor key instead (the production monitor's automatic
            rollback): it needs ``evidence``, may not choose ``to``, and marks the
            version it leaves ``suspect``, not ``bad``.
        evidence: The incident that moved the monitor: ``{"incident", "version",
            "windows"}``; its version must hold prod (the rollback is about it), and
            prod must not have been put there by a monitor rollback (one automatic
            rollback per model until an operator acts: traffic a caller shapes could
            otherwise walk prod back version by version).

    Raises:
        UsageError: No reason, no key, or a target of another model.
        RefusedError: ``rollback`` (no prod, no eligible earlier version, the
            target is prod, bad or never held prod) or ``registry`` (unknown version).
    """
    if not reason or not check_reason(reason):
        raise UsageError("a rollback needs --reason (it goes to the audit log)")
    mark = registry_tags.BAD
    if monitor_key_path is not None:
        if to is not None or request is not None or operator_key_path is not None:
            raise UsageError("a monitor rollback goes to the last known-good version only")
        if not evidence or not evidence.get("incident") or not evidence.get("version"):
            raise UsageError("a monitor rollback needs the incident that caused it")
        actor, _ = ledger.actor(monitor_key_path, role="monitor")
        mark = registry_tags.SUSPECT
    elif request is not None:
        actor = request.actor
    elif operator_key_path is None:
        raise UsageError("a rollback is an operator's decision: give --key OPERATOR_KEY")
    else:
        actor, _ = ledger.actor(operator_key_path, role="operator")
    if to is not None and model is not None and to.model != model:
        raise UsageError(f"--to {to} names another model than --model {model}")
    name = check_model_name(to.model if to else model or _only_model(ledger))
    state = registry_tags.read_registry(ledger, name)
    if not state.versions:
        raise RefusedError("registry", f"{name}: no such registered model")
    if state.prod is None:
        raise RefusedError("rollback", f"{name}: no version holds prod, nothing to roll back")
    if mark == registry_tags.SUSPECT:
        if state.prod != evidence["version"]:  # type: ignore[index]
            raise RefusedError("rollback", f"{name}: prod is {state.prod}, not the incident's "
                               f"{evidence['version']} (moved meanwhile)")  # type: ignore[index]  # fmt: skip
        if _monitor_put_prod(ledger, name):
            raise RefusedError("rollback", f"{name}@{state.prod} holds prod after a monitor "
                               "rollback: another automatic one waits for an operator")  # fmt: skip
    if to is None:
        eligible = state.known_good()
        if not eligible:
            raise RefusedError(
                "rollback", f"{name}: no earlier prod version that is not marked bad or suspect"
            )
        target = eligible[0]
    else:
        target = state.resolve(to).version
        if target == state.prod:
            raise RefusedError("rollback", f"{name}@{target} already holds prod")
        if target in state.bad:
            raise RefusedError("rollback", f"{name}@{target} is marked bad")
        if target not in state.prod_history:
            raise RefusedError("rollback", f"{name}@{target} never held prod (promote it instead)")
    return RollbackPlan(
        model=name, from_version=state.prod, to_version=target, actor=actor,
        reason=reason.strip(), request=request.digest if request else None, mark=mark,
        evidence=evidence if monitor_key_path is not None else None,
    )  # fmt: skip


def _monitor_put_prod(ledger: Ledger, model: str) -> bool:
    """Whether the last completed change of ``model``'s prod was a monitor rollback."""
    from aegis.ledger import Action

    dones = ledger.log.by_action(Action.done("promote"), Action.done("rollback"))
    for done in reversed(dones):
        seq = done.details.get("intent")
        if not isinstance(seq, int) or not 0 <= seq < len(ledger.log):
            continue
        intent = ledger.log.entry(seq)
        if intent.details.get("model_name") == model:
            return intent.action == Action.intent("rollback") and (
                intent.details.get("mark") == registry_tags.SUSPECT
            )
    return False


def verify_target(ledger: Ledger, plan: RollbackPlan):
    """Fetches (from DVC if needed) and verifies the target release.

    Returns:
        The ``VerifiedRelease`` (raises ``RefusedError`` naming the failed check).
    """
    from aegis.registry.verify import open_release

    return open_release(ledger, Target(model=plan.model, version=plan.to_version))


def apply_rollback(ledger: Ledger, plan: RollbackPlan, verified) -> RollbackOutcome:
    """Moves prod to the verified target and marks the previous holder (``plan.mark``).

    Under the workspace lock, the registry is read again: if prod moved or the
    target was marked bad meanwhile, the change is refused (and audited as
    aborted) and nothing changes. The intent binds each tag to its commit (the
    target's registration commit, the old holder's), so a crash is completed
    only onto those commits.
    """
    ws = ledger.ws
    if (verified.model_name, verified.version) != (plan.model, plan.to_version):
        raise RefusedError("identity", f"verified {verified.version}, planned {plan.to_version}")
    started = time.perf_counter()
    old = released_digests(ledger, plan.model, plan.from_version)
    subjects = {"model": verified.model_digest, "evidence": verified.evidence_digest}
    if old.get("model"):
        subjects["from_model"] = old["model"]
    if old.get("evidence"):
        subjects["from_evidence"] = old["evidence"]
    details = {
        "model_name": plan.model,
        "from_version": plan.from_version,
        "to_version": plan.to_version,
        "reason": plan.reason,
        **({"request": plan.request} if plan.request else {}),
        **({"mark": plan.mark} if plan.mark != registry_tags.BAD else {}),
        **(plan.evidence or {}),
    }
    state = registry_tags.read_registry(ledger, plan.model)
    planned = registry_tags.plan_stage_tags(
        ws,
        model=plan.model,
        ops=[(registry_tags.PROD, False), (registry_tags.PROD, True), (plan.mark, False)],
    )
    commits = [state.get(v) for v in (plan.to_version, plan.from_version, plan.from_version)]
    if any(c is None for c in commits):
        raise RefusedError("registry", f"{plan.model}: a planned version is not registered")
    bound = dict(zip(planned, [c.commit for c in commits], strict=True))  # type: ignore[union-attr]
    with journal.registry_change(
        ledger, action="rollback", actor=plan.actor, tags=planned, commits=bound,
        subjects=subjects, details=details,
    ) as change:  # fmt: skip
        message = change.message(
            f"aegis rollback {plan.from_version} -> {plan.to_version}: {plan.reason}"
        )
        state = registry_tags.read_registry(ledger, plan.model)
        if state.prod != plan.from_version:
            raise RefusedError(
                "rollback", f"prod moved to {state.prod} meanwhile (was {plan.from_version})"
            )
        if plan.to_version in state.bad or (
            plan.mark == registry_tags.SUSPECT and plan.to_version in state.suspect
        ):
            raise RefusedError("rollback", f"{plan.to_version} was marked {plan.mark} meanwhile")
        _set_stage(ws, plan, plan.to_version, registry_tags.PROD, message, unassign=False)
        journal.crash_point("rollback.assign")
        _set_stage(ws, plan, plan.from_version, registry_tags.PROD, message, unassign=True)
        journal.crash_point("rollback.unassign")
        _set_stage(ws, plan, plan.from_version, plan.mark, message, unassign=False)
        journal.crash_point("rollback.mark-bad")
    done = ledger.log.last
    return RollbackOutcome(
        model=plan.model,
        from_version=plan.from_version,
        to_version=plan.to_version,
        from_model_digest=old.get("model"),
        from_evidence_digest=old.get("evidence"),
        to_model_digest=verified.model_digest,
        to_evidence_digest=verified.evidence_digest,
        actor=plan.actor,
        reason=plan.reason,
        audit_seq=done.seq if done else -1,
        tags=list(change.tags),
        seconds=time.perf_counter() - started,
        mark=plan.mark,
    )


def _set_stage(
    ws: Workspace, plan: RollbackPlan, version: str, stage: str, message: str, *, unassign: bool
) -> None:
    call = registry_tags.unassign_stage if unassign else registry_tags.assign_stage
    call(ws, model=plan.model, version=version, stage=stage, message=message)


def rollback(
    ledger: Ledger,
    *,
    to: Target | None,
    reason: str,
    operator_key_path: Path | None,
    model: str | None = None,
    monitor_key_path: Path | None = None,
    evidence: dict | None = None,
) -> RollbackOutcome:
    """Verified rollback: plan, verify the target, then move prod (see the module docstring).

    Args:
        ledger: The workspace's verified ledger.
        to: Target version, or None for the latest earlier prod version not marked bad.
        reason: Why (audited).
        operator_key_path: An active operator key (the audited actor).
        model: Which model, if ``to`` is None and several are registered.
        monitor_key_path: The production monitor's key instead of an operator's (see
            :func:`plan_rollback`), with ``evidence``.
        evidence: The incident behind a monitor rollback.

    Returns:
        The outcome, with both versions' digests and the wall time.

    Raises:
        RefusedError: The target fails verification (named check) or is not
            eligible (``rollback``/``registry``); prod is unchanged.
        UsageError: Missing reason or key.
    """
    started = time.perf_counter()
    reconciled = journal.reconcile(ledger)
    plan = plan_rollback(
        ledger, to=to, reason=reason, operator_key_path=operator_key_path, model=model,
        monitor_key_path=monitor_key_path, evidence=evidence,
    )  # fmt: skip
    verified = verify_target(ledger, plan)
    outcome = apply_rollback(ledger, plan, verified)
    return dataclasses.replace(
        outcome,
        seconds=time.perf_counter() - started,
        reconciled=reconciled + outcome.reconciled,
    )
