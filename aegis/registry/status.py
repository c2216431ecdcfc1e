"""What ``aegis status`` shows: every registered version, its stages, figures and approvals.

Read-only display, built from the GTO tags (exact order, checked against
the audit log), each release's ``release.json`` and ``metrics.json`` (not
verified here: anything that loads, promotes, rolls back or exports a release
verifies it first) and the requests and decisions the audit log holds,
judged as promotion judges them (:mod:`aegis.registry.approvals_review`):
only approvals that count are shown as approvals, anything else as ignored
with its reason. A release directory that is not checked out in the
workspace is shown with the digests the audit log recorded at release time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis.errors import RefusedError
from aegis.fileutil import read_json_object
from aegis.ledger import Ledger
from aegis.pipeline.layout import Layout
from aegis.registry import approvals_review as review
from aegis.registry import approvals_store as store
from aegis.registry import tags as registry_tags
from aegis.triggers.record import Trigger


@dataclass
class ApprovalSummary:
    """The request and approval files of one version, verified as promotion does."""

    requested: bool = False  # a request file exists (see ``ignored`` if it does not verify)
    requester: str | None = None  # owner of the operator key that signed the request
    request_created: str | None = None
    expires: str | None = None
    expired: bool = False
    approved_by: list[str] = field(default_factory=list)  # owners whose approval counts
    rejected_by: list[str] = field(default_factory=list)  # owners whose rejection counts
    ignored: list[str] = field(default_factory=list)  # "<who>: ignored: <why>" per file


@dataclass
class VersionStatus:
    """One version of a model."""

    version: str
    tag: str
    commit: str
    stages: list[str]
    prod: bool
    bad: bool
    present: bool  # the release directory is in the workspace
    created: str | None
    registered: str  # when the GTO tag was made
    model_digest: str | None
    evidence_digest: str | None
    dataset: str | None
    clean_acc: float | None
    robust_acc: float | None  # worst case over the attacks evaluated
    epsilon: float | None  # DP epsilon spent (None without DP)
    signer: str | None
    approvals: ApprovalSummary
    # what started the run that released it (from its audit entry): kind event | schedule |
    # manual, with the event id or the person's key id; a release made by hand is manual
    trigger: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelStatus:
    """One registered model."""

    model: str
    prod: str | None
    bad: list[str]
    prod_history: list[str]
    versions: list[VersionStatus]
    suspect: list[str] = field(default_factory=list)  # rolled back from by the monitor


def _json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a release file, for display only (unverified; planted files skipped)."""
    try:
        return read_json_object(path, check="status", what=path.name)
    except RefusedError:
        return None


def approval_summary(ledger: Ledger, model: str, version: str) -> ApprovalSummary:
    """The latest audited request of ``model@version`` and the decisions that count.

    Files in ``.aegis/approvals/<model>/<version>/`` that no audited decision
    stands behind are listed as ignored (by name: they are never opened).
    """
    summary = ApprovalSummary()
    layout = Layout.of(ledger.ws)
    status = store.latest_request(ledger, model, version)
    candidate_files = store.stale_copies(layout, model, version)
    if status.request is None:
        if status.unusable is not None:
            summary.requested = True
            summary.expired = True
            summary.ignored.append(f"{store.REQUEST_FILE}: ignored: {status.unusable}")
        summary.ignored += [f"{p.name}: ignored: no valid request" for p in candidate_files]
        return summary
    request = status.request
    summary.requested = True
    summary.requester = request.requester_owner
    summary.request_created = request.body.get("created")
    summary.expires = request.expires
    summary.expired = request.expired()
    b = request.body
    candidate = store.Candidate(model, version, b["candidate"], b["evidence"])
    verdicts = review.review_decisions(ledger, candidate, request)
    for verdict in verdicts:
        if verdict.ignored is not None:
            summary.ignored.append(verdict.note)
        elif verdict.decision == "reject":
            summary.rejected_by.append(verdict.owner)
        elif verdict.owner not in summary.approved_by:
            summary.approved_by.append(verdict.owner)
    summary.ignored += review.unaudited_files(layout, candidate, verdicts)
    return summary


def _signer(release: dict[str, Any]) -> str | None:
    signer = release.get("signer")
    if isinstance(signer, dict):
        if signer.get("method") == "sigstore":
            return f"sigstore:{signer.get('identity')}"
        name = signer.get("name") or str(signer.get("key_id", ""))[:12]
        return f"{name} ({signer.get('owner')})" if signer.get("owner") else name
    return signer if isinstance(signer, str) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _trigger(audited) -> dict[str, Any]:
    """The audited trigger of a release; a release without one was made by hand, by its actor."""
    if audited is None:
        return {}
    recorded = Trigger.from_dict(audited.trigger)
    if recorded is not None:
        return recorded.to_dict()
    return Trigger(kind="manual", person=audited.actor or None).to_dict()


def model_status(ledger: Ledger, model: str) -> ModelStatus:
    """The status of one model (see the module docstring)."""
    layout = Layout.of(ledger.ws)
    released = ledger.releases()
    state = registry_tags.read_registry(ledger, model)
    versions = []
    for info in state.versions:
        audited = released.get((model, info.version))
        directory = layout.release(model, info.number)
        release = _json(directory / "release.json") or {}
        metrics = _json(directory / "metrics.json") or {}
        robust = metrics.get("robust") if isinstance(metrics.get("robust"), dict) else {}
        versions.append(
            VersionStatus(
                version=info.version,
                tag=info.tag,
                commit=info.commit,
                stages=sorted(info.stages),
                prod=info.version == state.prod,
                bad=info.version in state.bad,
                present=directory.is_dir(),
                created=release.get("created") or (audited.time if audited else None),
                registered=info.created,
                model_digest=release.get("model_digest") or (audited and audited.model_digest),
                evidence_digest=audited.evidence_digest if audited else None,
                dataset=release.get("dataset_digest") or (audited and audited.dataset_digest),
                clean_acc=_float(metrics.get("clean_acc")),
                robust_acc=_float(robust.get("worst_case")),
                epsilon=_float(metrics.get("epsilon_spent")),
                signer=_signer(release),
                approvals=approval_summary(ledger, model, info.version),
                trigger=_trigger(audited),
            )
        )
    return ModelStatus(
        model=model,
        prod=state.prod,
        bad=sorted(state.bad),
        suspect=sorted(state.suspect),
        prod_history=list(state.prod_history),
        versions=versions,
    )


def registry_status(ledger: Ledger) -> tuple[list[ModelStatus], list[str]]:
    """Interrupted registry changes reconciled first, then every registered model's status.

    Returns:
        The models (versions oldest first), and what reconciling did.
    """
    from aegis.registry.journal import reconcile

    notes = reconcile(ledger)
    return [model_status(ledger, m) for m in registry_tags.models(ledger.ws)], notes
