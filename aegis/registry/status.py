"""What ``aegis status`` shows: every registered version, its stages, figures and approvals.

Read-only display, built from the GTO tags (exact order), each release's
``release.json`` and ``metrics.json`` (not verified here: anything that
loads, promotes, rolls back or exports a release verifies it first) and the
files in ``.aegis/approvals/<model>/<version>/``. A release directory that is
not checked out in the workspace is shown with the digests the audit log
recorded at release time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aegis.registry import tags as registry_tags
from aegis.workspace import Workspace


@dataclass
class ApprovalSummary:
    """The request and approval files of one version (as found, not verified)."""

    requested: bool = False
    requester: str | None = None
    request_created: str | None = None
    expires: str | None = None
    expired: bool = False
    approved_by: list[str] = field(default_factory=list)
    rejected_by: list[str] = field(default_factory=list)
    unreadable: int = 0  # files that are not the expected signed JSON


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


def _body(path: Path) -> dict[str, Any] | None:
    data = _json(path)
    body = data.get("body") if data else None
    return body if isinstance(body, dict) else None


def _owner(body: dict[str, Any], role: str) -> str | None:
    for key in (f"{role}_owner", "owner"):
        if isinstance(body.get(key), str):
            return body[key]
    nested = body.get(role)
    if isinstance(nested, dict):
        return nested.get("owner") or nested.get("key_id")
    return body.get(f"{role}_key_id") or body.get("key_id")


def _expired(expires: str | None) -> bool:
    if not expires:
        return False
    try:
        when = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= datetime.now(UTC)


def approval_summary(ws: Workspace, model: str, version: str) -> ApprovalSummary:
    """Summarizes ``.aegis/approvals/<model>/<version>/`` (request and approval files)."""
    summary = ApprovalSummary()
    folder = ws.approvals_dir / model / version
    if not folder.is_dir():
        return summary
    request = folder / "request.json"
    if request.is_file():
        body = _body(request)
        summary.requested = True
        if body is None:
            summary.unreadable += 1
        else:
            summary.requester = _owner(body, "requester")
            summary.request_created = body.get("created")
            summary.expires = body.get("expires")
            summary.expired = _expired(summary.expires)
    for path in sorted(folder.glob("approval-*.json")):
        body = _body(path)
        if body is None:
            summary.unreadable += 1
            continue
        who = _owner(body, "approver") or path.stem.removeprefix("approval-")
        if body.get("decision") == "reject":
            summary.rejected_by.append(who)
        else:
            summary.approved_by.append(who)
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


def model_status(
    ws: Workspace, model: str, released: dict[tuple[str, str], dict[str, Any]] | None = None
) -> ModelStatus:
    """The status of one model (see the module docstring)."""
    released = _released(ws) if released is None else released
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
                approvals=approval_summary(ws, model, info.version),
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
