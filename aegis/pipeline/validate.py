"""The validate stage in a workspace: the stored dataset in, quarantine and evidence out.

Reads ``data/<name>`` (re-verified against its signature), runs the suite
and gates (:mod:`aegis.data.validate`) against the last validated version's
profile, and on success writes the quarantine, ``result.json`` (DVC metrics),
``report.html`` and the version's profile (the next run's drift reference),
and audits the result's digest. The retrain run validates the verified
staged copy *before* storing it (:mod:`aegis.pipeline.retrain`); both share
:func:`check_version`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace

from aegis import vcs
from aegis.data.ingest import VerifiedDataset, verify_staged
from aegis.data.manifest import check_dataset_name
from aegis.data.quarantine import write_release_copy
from aegis.data.report import render_report
from aegis.data.sources import StagedSource
from aegis.data.validate import (
    CheckedDataset,
    ValidationResult,
    check_dataset,
    read_frame,
    with_screens,
)
from aegis.errors import RefusedError, UnsafeFileError, UsageError
from aegis.fileutil import atomic_write, read_regular
from aegis.ledger import Action, Ledger
from aegis.pipeline.layout import Layout
from aegis.pipeline.screen import check_limit, row_index_bytes, row_index_path, run_screens
from aegis.pipeline.stages import commit_stage, require_stage


def load_stored(ledger: Ledger, name: str, *, version: str | None = None) -> VerifiedDataset:
    """Re-verifies ``data/<name>/``: signed as ingest verified it, and the current version.

    Args:
        ledger: The workspace's ledger.
        name: Dataset name.
        version: An accepted digest that may stand in for the current version:
            the data a model was trained on, checked out again to re-evaluate
            an older release (training never passes one).

    Raises:
        UsageError: The dataset was never ingested.
        RefusedError: Any ingest check (the stored copy was changed), or
            ``replay``: it is another version than the last one ingest accepted (an
            older accepted copy put back, to train on data that was replaced).
    """
    check_dataset_name(name)
    directory = Layout.of(ledger.ws).data(name)
    if not directory.is_dir() or directory.is_symlink():
        raise UsageError(f"dataset '{name}' has not been ingested (no data/{name}/)")
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    staged = StagedSource(str(directory), directory, len(list(directory.iterdir())), size)
    verified = verify_staged(ledger, staged, name=name)
    last = ledger.last_accepted(name)
    wanted = version is not None and verified.digest == version
    if not wanted and (last is None or last.digest != verified.digest):
        shown = last.digest[:19] if last else "none"
        raise RefusedError(
            "replay",
            f"data/{name} holds {verified.digest[:19]}, not the last version ingest accepted "
            f"({shown}); `git checkout -- data/{name}.dvc && dvc checkout data/{name}.dvc` "
            "restores it",
        )
    return verified


def reference_profile(ledger: Ledger, name: str, *, exclude: str) -> tuple[str, dict] | None:
    """The profile of the last validated version of ``name`` other than ``exclude``.

    Raises:
        RefusedError: ``drift``: the profile on disk is not the one audited.
    """
    entry = ledger.last_validation(name, exclude=exclude)
    if entry is None:
        return None
    digest = entry.subjects["dataset"]
    path = Layout.of(ledger.ws).profile(name, digest)
    try:
        raw = read_regular(path, what=f"profile of {digest[:19]}")
    except FileNotFoundError:
        raise RefusedError("drift", f"reference profile of {digest[:19]} is missing") from None
    except UnsafeFileError as exc:
        raise RefusedError("drift", exc.detail) from None
    if "sha256:" + hashlib.sha256(raw).hexdigest() != entry.details.get("profile_digest"):
        raise RefusedError("drift", f"reference profile of {digest[:19]} was altered")
    return digest, json.loads(raw)


def check_version(ledger: Ledger, verified: VerifiedDataset) -> CheckedDataset:
    """Validates a verified dataset (staged or stored); writes nothing.

    Raises:
        RefusedError: ``validation``, ``drift`` or ``schema`` (see :func:`check_dataset`),
            or ``suite``: the suite differs from the one committed to git.
        ConfigError: Not in ``pipeline.datasets``, or the suite is invalid.
    """
    ws = ledger.ws
    name = verified.name
    require_stage(ws, name)
    layout = Layout.of(ws)
    suite = layout.suite(name)
    # The result records the suite's digest and git keeps the suite, so what
    # "validated" meant for a version can always be read back: the suite must
    # be the committed one (an uncommitted, loosened suite never slips in).
    committed = vcs.committed_bytes(ws.root, layout.rel(suite))
    committed_digest = committed and "sha256:" + hashlib.sha256(committed).hexdigest()
    if suite.exists() and not committed_digest:
        raise _uncommitted(layout.rel(suite))
    frame = read_frame(verified)
    params = ws.params()
    checked = check_dataset(
        frame,
        name=name,
        digest=verified.digest,
        suite_path=suite,
        params=params.validation,
        reference=reference_profile(ledger, name, exclude=verified.digest),
        report=layout.rel(layout.validation_report(name)),
    )
    if checked.result.suite_digest != committed_digest:  # of the very bytes that validated
        raise _uncommitted(layout.rel(suite))
    return screened(ledger, checked, frame, verified)


def screened(ledger: Ledger, checked: CheckedDataset, frame, verified) -> CheckedDataset:
    """Runs the poisoning screens on what the suite let through; stops a version over the limit.

    Raises:
        ScreenRefusal: Over ``screen.max_flagged_fraction`` (audited, nothing stored).
    """
    import numpy as np

    name, digest = verified.name, verified.digest
    outcome = run_screens(
        ledger, frame, name=name, digest=digest,
        excluded=set(checked.result.quarantined_rows), params=ledger.ws.params(),
    )  # fmt: skip
    check_limit(
        ledger, outcome, name=name, digest=digest, rows=len(frame),
        supplier=verified.supplier_name,
    )  # fmt: skip
    checked = with_screens(checked, frame, outcome.row_reasons, outcome.summary)
    accepted = np.setdiff1d(np.arange(len(frame)), checked.result.quarantined_rows)
    index = None
    if len(frame) <= ledger.ws.params().screen.label_diff.max_rows:
        index = row_index_bytes(frame, accepted)
    return replace(checked, rows_index=index, supplier=verified.supplier_name)


def _uncommitted(rel: str) -> RefusedError:
    return RefusedError(
        "suite",
        f"{rel} differs from the committed version; commit it (the suite that validates is "
        "kept in git history) or restore it with git checkout",
    )


def write_validation(ledger: Ledger, checked: CheckedDataset, *, actor: str) -> ValidationResult:
    """Writes the quarantine, result, report and profile, and audits the result."""
    result = checked.result
    layout = Layout.of(ledger.ws)
    name = result.name
    with ledger.locked():
        for folder in (layout.validation_dir(name), layout.quarantine(name).parent):
            layout.ensure_dir(folder)
        layout.ensure_dir(layout.profiles(name))
        # Through atomic_write: a fixed temporary name would follow a planted symlink.
        parquet = io.BytesIO()
        checked.quarantine.to_parquet(parquet, index=False)
        atomic_write(layout.quarantine(name), parquet.getvalue())
        atomic_write(
            layout.validation_report(name), render_report(result, checked.quarantine).encode()
        )
        atomic_write(layout.validation_result(name), result.to_json())
        atomic_write(layout.profile(name, result.dataset), checked.profile)
        rows_digest = None
        if checked.rows_index is not None:
            atomic_write(row_index_path(layout, name, result.dataset), checked.rows_index)
            rows_digest = "sha256:" + hashlib.sha256(checked.rows_index).hexdigest()
        ledger.append(
            Action.VALIDATE_PASSED,
            actor=actor,
            subjects={
                "dataset": result.dataset,
                "validation": "sha256:" + hashlib.sha256(result.to_json()).hexdigest(),
            },
            details={
                "name": name,
                "suite": result.suite,
                "rows": result.rows["total"],
                "quarantined": result.rows["quarantined"],
                "reference": result.drift.reference,
                "worst_psi": result.drift.worst[1] if result.drift.worst else None,
                "profile_digest": result.profile_digest,
                "rows_digest": rows_digest,
                "supplier": checked.supplier,
                "screen_flagged": result.rows.get("screened", 0),
                "screens": {
                    s: result.screens[s]["flagged"]
                    for s in result.screens.get("enabled", [])
                    if s in result.screens
                },
            },
        )
        # the train stage depends on it: the signed releases of this version, if any
        write_release_copy(ledger, name, result.dataset)
    return result


def validate_dataset(ledger: Ledger, name: str, *, actor: str) -> ValidationResult:
    """Validates the stored dataset ``name`` (``aegis validate``, the DVC stage).

    Raises:
        ConfigError: ``name`` is not in ``pipeline.datasets`` (no stage tracks its outputs).
    """
    require_stage(ledger.ws, name)
    return write_validation(ledger, check_version(ledger, load_stored(ledger, name)), actor=actor)


def record_validation(ledger: Ledger, result: ValidationResult) -> str:
    """Commits the validate stage of ``result`` (dvc.lock, metrics, profile) to git."""
    layout = Layout.of(ledger.ws)
    name = result.name
    evidence = [
        layout.rel(p)
        for p in (
            layout.validation_result(name),
            layout.profile(name, result.dataset),
            layout.quarantine_releases(name),
        )
    ]
    index = row_index_path(layout, name, result.dataset)
    if index.exists():
        evidence.append(layout.rel(index))
    return commit_stage(
        ledger,
        f"validate@{name}",
        evidence=evidence,
        message=f"validate {name} {result.dataset}: {result.rows['quarantined']} row(s) "
        "quarantined",
    )
