"""What ``aegis status`` shows: every registered version, its stages, figures and approvals.

Read-only display, built from the GTO tags (exact order), each release's
``release.json`` and ``metrics.json`` (not verified here: anything that
loads, promotes, rolls back or exports a release verifies it first) and the
files in ``.aegis/approvals/<model>/<version>/``. Those are checked as
promotion checks them (:mod:`aegis.registry.approvals_review`, against the
request's candidate): only approvals that count are shown as approvals, any
other file as ignored with its reason. A release directory that is not checked
out in the workspace is shown with the digests the audit log recorded at
release time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis.audit import AuditEntry
from aegis.crypto.truststore import TrustStore
from aegis.errors import RefusedError
from aegis.registry import approvals_review as review
from aegis.registry import approvals_store as store
from aegis.registry import tags as registry_tags
from aegis.workspace import Workspace


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


@dataclass
class ModelStatus:
    """One registered model."""

    model: str
    prod: str | None
    bad: list[str]
    prod_history: list[str]
    versions: list[VersionStatus]


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def approval_summary(
    ws: Workspace,
    model: str,
    version: str,
    *,
    trust: TrustStore | None = None,
    entries: list[AuditEntry] | None = None,
) -> ApprovalSummary:
    """Summarizes ``.aegis/approvals/<model>/<version>/``: the verified request and decisions.

    Args:
        trust, entries: The trust store and the (verified) audit entries; loaded if not
            given. ``entries=[]`` makes every approval file ignored.
    """
    summary = ApprovalSummary()
    folder = store.version_dir(ws, model, version)
    if not folder.is_dir():
        return summary
    summary.requested = (folder / store.REQUEST_FILE).is_file()
    try:
        request = store.load_request(ws, model, version)
    except RefusedError as exc:
        summary.ignored.append(f"{store.REQUEST_FILE}: ignored: {exc.detail}")
        request = None
    if request is None:
        summary.ignored += [
            f"{path.name}: ignored: no valid request" for path in folder.glob("approval-*.json")
        ]
        return summary
    summary.requester = request.requester_owner
    summary.request_created = request.body.get("created")
    summary.expires = request.expires
    summary.expired = request.expired()
    b = request.body
    candidate = store.Candidate(model, version, b["candidate"], b["evidence"])
    for verdict in review.review_approvals(ws, candidate, request, trust=trust, entries=entries):
        if entries == []:  # the audit log did not verify (it always holds workspace.init)
            summary.ignored.append(f"{verdict.who}: ignored: the audit log does not verify")
        elif verdict.ignored is not None:
            summary.ignored.append(verdict.note)
        elif verdict.decision == "reject":
            summary.rejected_by.append(str(verdict.owner))
        elif verdict.owner not in summary.approved_by:
            summary.approved_by.append(str(verdict.owner))
    return summary


def _signer(release: dict[str, Any]) -> str | None:
    signer = release.get("signer")
    if isinstance(signer, dict):
        if signer.get("method") == "sigstore":
            return f"sigstore:{signer.get('identity')}"
        name = signer.get("name") or signer.get("key_id", "")[:12]
        return f"{name} ({signer.get('owner')})" if signer.get("owner") else name
    return signer if isinstance(signer, str) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _released(ws: Workspace) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in ws.audit().entries():
        if entry.action == "release.created":
            d = entry.details
            found[(str(d.get("model_name")), str(d.get("version")))] = {
                **entry.subjects,
                "time": entry.time,
                "directory": d.get("directory"),
            }
    return found


def _verified_log(ws: Workspace) -> tuple[TrustStore, list[AuditEntry]]:
    """The trust store and the audit entries; none if the log does not verify."""
    try:
        ws.verify_audit()
    except RefusedError:
        return ws.trust(), []  # then no approval counts (each is shown as ignored)
    return ws.trust(), ws.audit().entries()


def model_status(
    ws: Workspace, model: str, released: dict[tuple[str, str], dict[str, Any]] | None = None
) -> ModelStatus:
    """The status of one model (see the module docstring)."""
    released = _released(ws) if released is None else released
    trust, entries = _verified_log(ws)
    state = registry_tags.read_registry(ws, model)
    versions = []
    for info in state.versions:
        audited = released.get((model, info.version), {})
        directory = ws.root / (audited.get("directory") or f"releases/{model}/v{info.number}")
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
                created=release.get("created") or audited.get("time"),
                registered=info.created,
                model_digest=release.get("model_digest") or audited.get("model"),
                evidence_digest=audited.get("evidence"),
                dataset=release.get("dataset_digest") or audited.get("dataset"),
                clean_acc=_float(metrics.get("clean_acc")),
                robust_acc=_float(robust.get("worst_case")),
                epsilon=_float(metrics.get("epsilon_spent")),
                signer=_signer(release),
                approvals=approval_summary(ws, model, info.version, trust=trust, entries=entries),
            )
        )
    return ModelStatus(
        model=model,
        prod=state.prod,
        bad=sorted(state.bad),
        prod_history=list(state.prod_history),
        versions=versions,
    )


def registry_status(ws: Workspace) -> list[ModelStatus]:
    """The status of every registered model, versions oldest first."""
    released = _released(ws)
    return [model_status(ws, m, released) for m in registry_tags.models(ws)]
