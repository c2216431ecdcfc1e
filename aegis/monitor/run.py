"""One pass of the production monitor: read new windows, test them, open incidents.

What a pass may do is decided here, not in the CLI: it reads the prediction log through
the signed segment index (:mod:`aegis.monitor.feed`), tests each full window of ``n``
rows of a version against that release's signed reference (``metrics.json["monitor"]``,
fitted in evaluation; the release is verified before it is believed), and when a
signal breaches in ``confirm`` windows in a row it opens an incident on the audit log,
emits ``aegis.monitor.breach`` to Prefect and contains it as the release's policy says
(:mod:`aegis.monitor.contain`: rollback, throttle, retrain or alert). It holds a
``monitor`` key: it signs its state and is the actor of its incidents, throttles and
rollbacks; it can neither promote nor approve (those commands ask for other roles).
Every tested window's values go to the window history (:mod:`aegis.monitor.windows`),
and the figures to a Prometheus textfile (:mod:`aegis.monitor.prom`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis.crypto.keys import load_private_key
from aegis.errors import AegisError, RefusedError, UsageError
from aegis.events import EventOutbox, make_event
from aegis.ledger import Ledger
from aegis.monitor.contain import BREACH, contain, decide
from aegis.monitor.feed import Rows, Segment, concat, missing_by_cap, read_rows, signed_segments
from aegis.monitor.feedback import Labels, served_feedback, truth_of
from aegis.monitor.incidents import Incident, incident_id, incidents, record_incident
from aegis.monitor.state import MonitorState, Streak, load_state, save_state
from aegis.monitor.windows import WindowRecord, append_windows
from aegis.timeutil import utc_now


@dataclass
class PassReport:
    """What one pass read and found."""

    windows: dict[str, int] = field(default_factory=dict)  # version -> windows tested
    breaches: dict[str, dict[str, int]] = field(default_factory=dict)  # version -> signal -> n
    incidents: list[Incident] = field(default_factory=list)
    skipped_segments: int = 0  # removed by the log's cap before they were read
    unmonitored: list[str] = field(default_factory=list)  # versions without a reference
    contained: list[dict[str, Any]] = field(default_factory=list)  # monitor.contained details
    feedback_skipped: int = 0  # feedback lines that did not verify (never believed)

    def to_json(self) -> dict[str, Any]:
        return {
            "windows": self.windows, "breaches": self.breaches,
            "incidents": [i.to_json() for i in self.incidents],
            "skipped_segments": self.skipped_segments, "unmonitored": self.unmonitored,
            "contained": self.contained, "feedback_skipped": self.feedback_skipped,
        }  # fmt: skip


def monitor_pass(
    ledger: Ledger,
    *,
    key_path: Path | None,
    model: str | None = None,
    events: EventOutbox | None = None,
    gateway: str | None = None,
    feedback: Labels | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> PassReport:
    """Reads every full window since the last pass and acts on confirmed breaches.

    Args:
        ledger: The workspace's verified ledger.
        key_path: An active monitor key.
        model: The model (when several are registered).
        events: Where breach events go (default: Prefect's REST API, when configured).
        gateway: The gateway's URL: a rollback is contained when its ``/readyz``
            serves the target (without it, when the registry moved).
        feedback: True labels from an operator's file
            (:func:`aegis.monitor.feedback.read_feedback`); what clients sent to
            ``POST /v1/feedback`` is read every pass (the file wins for a request in both).
        progress: Called with a line per step.

    Raises:
        UsageError: No key, or several models and no ``model``.
        RefusedError: ``signer`` (not an active monitor key), ``prediction-log`` (a
            segment or index line that does not verify), ``monitor-state``, or
            ``monitor-reference`` (a release's reference is malformed).
    """
    if key_path is None:
        raise UsageError("the monitor acts with a monitor key: --key MONITOR_KEY")
    if gateway is not None and not gateway.startswith(("http://", "https://")):
        raise UsageError(f"--gateway {gateway!r}: an http:// or https:// URL")
    key = load_private_key(key_path)
    actor = ledger.trust.require_signer(key.key_id, role="monitor", what=str(key_path),
                                        new=True).key_id  # fmt: skip
    name = model or _only_model(ledger)
    report = PassReport()
    outbox = events if events is not None else EventOutbox()
    with ledger.locked():  # one pass at a time: the state and the incidents move together
        state = load_state(ledger.ws, ledger.trust)
        segments = signed_segments(ledger)
        gone = missing_by_cap(ledger, segments)
        by_version: dict[str, list[Segment]] = {}
        for segment in segments:
            by_version.setdefault(segment.version, []).append(segment)
        served, report.feedback_skipped = served_feedback(ledger)
        if report.feedback_skipped:
            progress(f"{report.feedback_skipped} feedback line(s) do not verify: skipped")
        labels = served | (feedback or {})
        opened: list[Incident] = []
        history: list[WindowRecord] = []
        policies: dict[str, Any] = {}  # version -> its verified release's monitor params
        for version, group in by_version.items():
            opened += _version_pass(ledger, state, report, name, version, group, gone, actor,
                                    history, labels, policies, progress)  # fmt: skip
        # incidents before the state: a crash between them re-reads the windows, and an
        # incident's id (its evidence) keeps it from being recorded twice
        for incident in opened:
            recorded, new = record_incident(ledger, incident)
            if not new:
                continue
            report.incidents.append(recorded)
            outbox.put(_event(ledger, recorded))
        save_state(ledger.ws, state, key)
        append_windows(ledger.ws, history)
    outbox.send(force=True)
    # outside the lock (a rollback takes it itself); an incident a crash left uncontained
    # is contained by the next pass, while its version still holds prod
    for incident in _uncontained(ledger, name):
        try:
            params = policies.get(incident.version) or _policy(
                ledger, incident.model, incident.version
            )  # an older incident's version may not have been read (verified) this pass
            done = contain(ledger, incident, key_path=key_path, params=params, gateway=gateway,
                           progress=progress)  # fmt: skip
        except AegisError as exc:  # one incident's release gone bad must not block the rest
            progress(f"incident {incident.id}: not contained ({exc})")
            continue
        if done is not None:
            report.contained.append(done)
    from aegis.monitor.prom import write_metrics
    from aegis.monitor.windows import read_windows

    ledger.refresh()
    write_metrics(ledger.ws, windows=read_windows(ledger.ws), incidents=incidents(ledger))
    return report


def _uncontained(ledger: Ledger, model: str) -> list[Incident]:
    """Throttle and rollback incidents without a containment record (a rollback whose
    version no longer holds prod is recorded refused; one a crash interrupted after the
    registry moved is recorded from its rollback entry)."""
    return [
        i for i in incidents(ledger) if i.model == model and i.containment is None
        and i.action in ("throttle", "rollback")
    ]  # fmt: skip


def _event(ledger: Ledger, incident: Incident) -> dict:
    return make_event(
        BREACH, resource_id=f"aegis.model.{incident.model}",
        resource={"aegis.model": incident.model, "aegis.version": incident.version,
                  "aegis.signals": ",".join(incident.signals), "aegis.incident": incident.id,
                  "aegis.action": incident.action,
                  "aegis.workspace": ledger.ws.label()},
        payload=incident.to_json(),
    )  # fmt: skip


def _version_pass(ledger, state: MonitorState, report: PassReport, model: str, version: str,
                  segments: list[Segment], gone: set[int], actor: str,
                  history: list[WindowRecord], feedback: Labels,
                  policies: dict[str, Any], progress) -> list[Incident]:  # fmt: skip
    from aegis.evaluate.monitoring import MonitorReference, breaches, signals

    cursor = state.of(f"{model}@{version}")
    at = next((s for s in segments if s.line == cursor.line), None)
    if cursor.sha is not None and (at is None or at.sha256 != cursor.sha):
        raise RefusedError("prediction-log", f"the segment index changed under the monitor's "
                           f"cursor (line {cursor.line} is not the segment it read)")  # fmt: skip
    pending = [s for s in segments if s.line > cursor.line or (s is at and cursor.offset < s.rows)]
    if not pending:
        return []  # read to its end: its release is not verified again
    record, digest, params = _reference(ledger, model, version)
    policies[version] = params
    if record is None:
        report.unmonitored.append(version)
        return []
    try:
        ref = MonitorReference.from_json(record)
        confirm = record.get("calibrated_on", {}).get("confirm", 1)
        if not isinstance(confirm, int) or isinstance(confirm, bool) or not 1 <= confirm <= 10:
            raise ValueError("malformed monitor reference (confirm)")
    except (ValueError, AttributeError) as exc:
        raise RefusedError("monitor-reference", f"{model}@{version}: {exc}") from None
    parts: list[Rows] = []
    for segment in pending:
        start = cursor.offset if segment is at else 0
        rows = None if segment.line in gone else read_rows(ledger, segment, start=start,
                                                           expect_digest=digest)  # fmt: skip
        if rows is None:
            if segment.line not in gone:
                raise RefusedError("prediction-log", f"{segment.file} vanished while read")
            report.skipped_segments += 1
        elif len(rows):
            parts.append(rows)
    n = ref.window
    rows = concat(parts) if parts else None
    count = 0 if rows is None else len(rows) // n
    if count == 0:
        return []
    progress(f"{model}@{version}: {count} window(s) of {n} rows")
    cut = slice(0, count * n)
    probs = rows.probs[cut].reshape(count, n, -1)
    ood = None if rows.ood is None else rows.ood[cut].reshape(count, n)
    truth = None
    if feedback:
        truth = truth_of(feedback, rows.requests[cut], rows.clients[cut]).reshape(count, n)
    flagged = None if rows.flagged is None else rows.flagged[cut].reshape(count, n)
    extracting = None if rows.extracting is None else rows.extracting[cut].reshape(count, n)
    inputs = None
    bins = ref.inputs
    # the same features it was fitted on, or none: a version's log kept as its params said
    if rows.inputs is not None and bins is not None and rows.input_mode == bins.mode \
            and rows.inputs.shape[1] == len(bins.cuts):  # fmt: skip
        inputs = rows.inputs[cut].reshape(count, n, -1)
    values = signals(ref, probs, rows.labels[cut].reshape(count, n), ood, truth, flagged,
                     inputs=inputs, extracting=extracting,
                     latency=_latency(cursor, rows, count, n))  # fmt: skip
    hits = breaches(ref, values)
    evidence = _evidence(ref, rows, cut, truth, ood)
    opened = []
    shas = {s.line: s.sha256 for s in pending}
    for w in range(count):
        window = slice(w * n, (w + 1) * n)
        digest = _window_digest(shas, rows.origin[window.start], rows.origin[window.stop - 1])
        history.append(WindowRecord(
            model=model, version=version, window=digest, start=_iso(rows.times[window.start]),
            end=_iso(rows.times[window.stop - 1]),
            values={s: round(float(v[w]), 6) for s, v in values.items()},
            thresholds={s: ref.thresholds[s] for s in values if s in ref.thresholds},
            breached=sorted(s for s, hit in hits.items() if hit[w]),
        ))  # fmt: skip
        confirmed: dict[str, Streak] = {}
        for signal, hit in hits.items():
            streak = cursor.streaks.setdefault(signal, Streak())
            if not hit[w]:
                cursor.streaks[signal] = Streak()
                continue
            report.breaches.setdefault(version, {}).setdefault(signal, 0)
            report.breaches[version][signal] += 1
            if streak.count == 0:
                streak.first_time = _iso(rows.times[window.start])
            streak.count += 1
            streak.windows = [*streak.windows, digest][-confirm:]
            if streak.count == confirm:  # confirmed once; a longer run is the same incident
                confirmed[signal] = streak
        if confirmed:
            opened.append(_incident(model, version, confirmed, values, w, confirm, ref, rows,
                                    window, actor, params, evidence))  # fmt: skip
    last_line, last_row = rows.origin[count * n - 1]
    cursor.line, cursor.offset = last_line, last_row + 1
    cursor.sha = next(s.sha256 for s in pending if s.line == last_line)
    cursor.windows += count
    report.windows[version] = count
    return opened


def _latency(cursor, rows: Rows, count: int, n: int) -> np.ndarray:
    """Each window's ``latency_shift``: its requests' latencies (a request counts in the
    window holding its first row) ranked against the version's preceding requests, which
    the cursor carries from pass to pass (the last ``LATENCY_HISTORY``)."""
    from aegis.evaluate.monitoring import LATENCY_HISTORY, latency_surprise

    history = list(cursor.latency)
    out = np.zeros(count)
    for w in range(count):
        window = slice(w * n, (w + 1) * n)
        during = rows.latency[window][np.char.endswith(rows.requests[window], "#0")]
        out[w] = latency_surprise(np.asarray(history[-LATENCY_HISTORY:]), during)
        history.extend(float(v) for v in during)
    cursor.latency = [round(v, 3) for v in history[-LATENCY_HISTORY:]]
    return out


def _evidence(ref, rows: Rows, cut: slice, truth, ood) -> dict[str, np.ndarray]:
    """Per signal counted over rows, which rows it counted (the others are tests of a whole
    window's distribution): the keys a breach is laid on are those rows' keys."""
    out = {}
    if truth is not None:
        out["feedback_accuracy"] = truth.reshape(-1) >= 0
    if ood is not None and ref.ood_cut is not None:
        out["ood_count"] = ood.reshape(-1) > ref.ood_cut
    for name, column in (("adversarial_count", rows.flagged), ("extraction_count",
                                                                rows.extracting)):  # fmt: skip
        if column is not None:
            out[name] = column[cut]
    return out


def _incident(model, version, confirmed, values, w, confirm, ref, rows, window, actor, params,
              evidence):  # fmt: skip
    """One incident for every signal confirmed on window ``w``; its evidence is the
    union of their breaching windows (the earliest first bad request). The one-key rule
    weighs the keys of the rows the signals counted (labelled, flagged, out-of-range
    rows) when every signal counts rows: one key's lying feedback throttles that key,
    even when its rows are a minority of the traffic."""
    windows = sorted({d for streak in confirmed.values() for d in streak.windows})
    earliest = min(s.first_time or _iso(rows.times[window.start]) for s in confirmed.values())
    start = max(window.stop - confirm * ref.window, 0)
    clients = rows.clients[start : window.stop]
    if all(s in evidence for s in confirmed):
        counted = np.any([evidence[s][start : window.stop] for s in confirmed], axis=0)
        if counted.any():
            clients = clients[counted]
    keys, counts = np.unique(clients, return_counts=True)
    shares = {str(k): float(c / len(clients)) for k, c in zip(keys, counts, strict=True)}
    decision = decide(sorted(confirmed), shares, params)
    lo = max(w - confirm + 1, 0)
    return Incident(
        id=incident_id(version, windows), model=model, version=version,
        signals=sorted(confirmed),
        values={s: [round(float(v), 6) for v in values[s][lo : w + 1]] for s in confirmed},
        thresholds={s: ref.thresholds[s] for s in confirmed}, windows=windows,
        first_bad=earliest, detected=utc_now(), action=decision.action, actor=actor,
        top_client_share=round(float(counts.max() / len(clients)), 4),
        clients=decision.clients, why=decision.why,
    )  # fmt: skip


def _policy(ledger: Ledger, model: str, version: str):
    """The containment policy of ``model@version``: its signed release's ``monitor:``."""
    return _reference(ledger, model, version)[2]


def _reference(ledger: Ledger, model: str, version: str):
    """The verified release's monitor reference (None when it has none), model digest and
    ``monitor:`` params (its containment policy)."""
    from aegis.registry.targets import Target
    from aegis.registry.verify import open_release, release_params

    release = open_release(ledger, Target(model=model, version=version), fetch=False)
    record = release.metrics.get("monitor")
    return (
        (record if isinstance(record, dict) else None),
        release.model_digest,
        release_params(release).monitor,
    )


def _only_model(ledger: Ledger) -> str:
    from aegis.registry.tags import models

    names = models(ledger.ws)
    if len(names) != 1:
        raise UsageError(f"{len(names)} models are registered: give --model")
    return names[0]


def _window_digest(shas: dict[int, str], first: tuple[int, int], last: tuple[int, int]) -> str:
    """Names a window by the signed segments and rows it spans (its evidence)."""
    text = f"{shas[first[0]]}:{first[1]}-{shas[last[0]]}:{last[1]}"
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _iso(value: np.datetime64) -> str:
    return np.datetime_as_string(value, unit="us") + "Z"  # as utc_now writes it
