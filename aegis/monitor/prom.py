"""The monitor's Prometheus metrics, as a textfile-collector file.

``aegis monitor`` is a pass, not a server, so it leaves its figures where node_exporter's
textfile collector (``--collector.textfile.directory``) picks them up:
``.aegis/monitor/metrics.prom``, replaced atomically, so a scrape never reads half a
file. It holds each signal's latest value and threshold per model version, how many
windows were tested and incidents opened, and the newest incidents' times to detect and
to contain (the dashboard ``infra/grafana/aegis.json`` draws them). Label values (model
names, versions, signals, incident ids) are escaped by prometheus_client's exposition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aegis.errors import RefusedError, UnsafeFileError
from aegis.fileutil import atomic_write, ensure_dir
from aegis.monitor.incidents import Incident
from aegis.monitor.windows import WindowRecord
from aegis.workspace import Workspace

RECENT = 20  # the incidents whose times get a series (an id is a label: keep them few)


def metrics_path(ws: Workspace) -> Path:
    """Where :func:`write_metrics` writes (point the textfile collector at its directory)."""
    return ws.aegis_dir / "monitor" / "metrics.prom"


def write_metrics(ws: Workspace, *, windows: list[WindowRecord], incidents: list[Incident]) -> Path:
    """Writes the monitor's metrics for Prometheus's textfile collector, atomically.

    Args:
        ws: The workspace.
        windows: Tested windows, oldest first (:func:`aegis.monitor.windows.read_windows`).
        incidents: Incidents, oldest first (:func:`aegis.monitor.incidents.incidents`).

    Returns:
        The file written (:func:`metrics_path`).

    Raises:
        RefusedError: ``monitor-metrics``: a directory on its path is a symlink.
    """
    path = metrics_path(ws)
    try:
        ensure_dir(ws.root, path.parent)
    except UnsafeFileError as exc:
        raise RefusedError("monitor-metrics", exc.detail) from None
    atomic_write(path, render_metrics(windows=windows, incidents=incidents))
    return path


def render_metrics(*, windows: list[WindowRecord], incidents: list[Incident]) -> bytes:
    """The metrics in Prometheus's text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(windows, incidents))
    return generate_latest(registry)


class _Snapshot(Collector):
    """The figures of one monitor pass (computed from its records, not accumulated)."""

    def __init__(self, windows: list[WindowRecord], incidents: list[Incident]) -> None:
        self.windows = windows
        self.incidents = incidents

    def collect(self) -> Iterator[Metric]:
        yield from families(self.windows, self.incidents)


def families(windows: list[WindowRecord], incidents: list[Incident]) -> list[Metric]:
    """The monitor's metric families (every family, with or without samples)."""
    version = ["model", "version"]
    signal = GaugeMetricFamily(
        "aegis_monitor_signal",
        "A signal's value in the newest window that has it",
        labels=[*version, "signal"],
    )
    threshold = GaugeMetricFamily(
        "aegis_monitor_threshold",
        "A signal's threshold (a window breaches above it)",
        labels=[*version, "signal"],
    )
    tested = CounterMetricFamily(
        "aegis_monitor_windows", "Windows tested per model version", labels=version
    )
    opened = CounterMetricFamily(
        "aegis_monitor_incidents",
        "Incidents opened per model version and action",
        labels=[*version, "action"],
    )
    detect = GaugeMetricFamily(
        "aegis_monitor_time_to_detect_seconds",
        f"Seconds from an incident's first bad request to its detection (newest {RECENT})",
        labels=["incident"],
    )
    contain = GaugeMetricFamily(
        "aegis_monitor_time_to_contain_seconds",
        f"Seconds from an incident's first bad request to its containment (newest {RECENT})",
        labels=["incident"],
    )

    latest: dict[tuple[str, str, str], tuple[float, float | None]] = {}
    for r in windows:  # oldest first: a later window's value replaces an earlier one's
        for name, value in r.values.items():
            latest[(r.model, r.version, name)] = (value, r.thresholds.get(name))
    for labels, (value, limit) in latest.items():
        signal.add_metric(list(labels), value)
        if limit is not None:
            threshold.add_metric(list(labels), limit)
    for (model, ver), count in Counter((r.model, r.version) for r in windows).items():
        tested.add_metric([model, ver], count)
    for labels, count in Counter((i.model, i.version, i.action) for i in incidents).items():
        opened.add_metric(list(labels), count)
    for incident in incidents[-RECENT:]:
        try:
            ttd, ttc = incident.time_to_detect_s, incident.time_to_contain_s
        except (ValueError, TypeError):  # a timestamp this code never wrote: no series
            continue
        detect.add_metric([incident.id], ttd)
        if ttc is not None:
            contain.add_metric([incident.id], ttc)
    return [signal, threshold, tested, opened, detect, contain]
