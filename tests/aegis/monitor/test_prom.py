"""The monitor's textfile-collector metrics, and the Grafana dashboard over them and the
gateway's: every PromQL expression names only metrics the real registries export."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aegis.errors import RefusedError
from aegis.monitor.incidents import Incident
from aegis.monitor.prom import RECENT, families, metrics_path, render_metrics, write_metrics
from aegis.monitor.windows import WindowRecord
from aegis.workspace import Workspace

DASHBOARD = Path(__file__).resolve().parents[3] / "infra" / "grafana" / "aegis.json"
HOSTILE = 'm"\\\n<script>{x="1"}'


def _window(version: str, k: int, ks: float, model: str = "digits-model") -> WindowRecord:
    return WindowRecord(
        model=model, version=version, window=f"sha256:{version}:{k}",
        start=f"2025-03-01T12:{k:02d}:00.000000Z", end=f"2025-03-01T12:{k:02d}:50.000000Z",
        values={"softmax_ks": ks, "label_chi2": 3.0 + k}, thresholds={"softmax_ks": 0.25,
                                                                      "label_chi2": 20.0},
        breached=["softmax_ks"] if ks > 0.25 else [],
    )  # fmt: skip


def _incident(n: int, *, version: str = "v2.0.0", action: str = "rollback",
              contained: bool = True) -> Incident:  # fmt: skip
    return Incident(
        id=f"inc-{n:012d}", model="digits-model", version=version, signals=["softmax_ks"],
        values={"softmax_ks": [0.4]}, thresholds={"softmax_ks": 0.25}, windows=[f"w{n}"],
        first_bad="2025-03-01T12:00:00.000000Z", detected=f"2025-03-01T12:00:{n:02d}.000000Z",
        action=action, actor="watchman",
        contained=f"2025-03-01T12:01:{n:02d}.000000Z" if contained else None,
    )  # fmt: skip


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_hold_the_latest_signals_the_counts_and_the_newest_incidents_times(tmp_path):
    windows = [_window("v1.0.0", k, 0.1) for k in range(3)]
    windows += [_window("v2.0.0", k, 0.1 if k < 4 else 0.4) for k in range(6)]
    windows.append(replace(_window("v1.0.0", 9, 0.2), values={"label_chi2": 7.0}))
    incidents = [_incident(n, contained=n % 2 == 0) for n in range(RECENT + 5)]
    incidents.append(_incident(50, version="v1.0.0", action="alert", contained=False))

    path = write_metrics(Workspace(tmp_path), windows=windows, incidents=incidents)
    assert (
        path
        == tmp_path / ".aegis" / "monitor" / "metrics.prom"
        == metrics_path(Workspace(tmp_path))
    )
    assert not [p for p in path.parent.iterdir() if p != path]  # the atomic write's temp gone
    got = _samples(path.read_text())

    def one(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    v1, v2 = {"model": "digits-model", "version": "v1.0.0"}, {"model": "digits-model",
                                                            "version": "v2.0.0"}  # fmt: skip
    assert one("aegis_monitor_signal", **v2, signal="softmax_ks") == 0.4  # the last window's
    assert one("aegis_monitor_signal", **v2, signal="label_chi2") == 8.0
    assert one("aegis_monitor_signal", **v1, signal="label_chi2") == 7.0
    assert one("aegis_monitor_signal", **v1, signal="softmax_ks") == 0.1  # newest that has it
    assert one("aegis_monitor_threshold", **v2, signal="softmax_ks") == 0.25
    assert one("aegis_monitor_windows_total", **v1) == 4
    assert one("aegis_monitor_windows_total", **v2) == 6
    assert one("aegis_monitor_incidents_total", **v2, action="rollback") == RECENT + 5
    assert one("aegis_monitor_incidents_total", **v1, action="alert") == 1

    detect = {dict(k[1])["incident"]: v for k, v in got.items()
              if k[0] == "aegis_monitor_time_to_detect_seconds"}  # fmt: skip
    contain = {dict(k[1])["incident"]: v for k, v in got.items()
               if k[0] == "aegis_monitor_time_to_contain_seconds"}  # fmt: skip
    newest = incidents[-RECENT:]
    assert set(detect) == {i.id for i in newest}
    assert set(contain) == {i.id for i in newest if i.contained is not None}
    assert detect["inc-000000000024"] == 24.0 and contain["inc-000000000024"] == 84.0
    assert not any(name.endswith("_created") for name, _ in got)  # a snapshot, no start time


def test_hostile_label_values_are_escaped_and_read_back_exactly(tmp_path):
    windows = [replace(_window("v1", 0, 0.1, model=HOSTILE), values={HOSTILE: 1.5},
                       thresholds={HOSTILE: 2.0})]  # fmt: skip
    incident = replace(_incident(1, version=HOSTILE, action=HOSTILE), id=HOSTILE)
    text = render_metrics(windows=windows, incidents=[incident]).decode()
    assert len([line for line in text.splitlines() if not line.startswith("#")]) == 6
    got = _samples(text)
    assert (
        got[
            (
                "aegis_monitor_signal",
                frozenset({"model": HOSTILE, "version": "v1", "signal": HOSTILE}.items()),
            )
        ]
        == 1.5
    )
    assert got[("aegis_monitor_time_to_detect_seconds", frozenset({"incident": HOSTILE}.items()))]


def test_a_planted_symlink_is_replaced_and_a_symlinked_directory_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (ws.aegis_dir / "monitor").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("kept")
    metrics_path(ws).symlink_to(victim)
    path = write_metrics(ws, windows=[_window("v1", 0, 0.1)], incidents=[])
    assert not path.is_symlink() and "aegis_monitor_signal" in path.read_text()
    assert victim.read_text() == "kept"

    other = Workspace(tmp_path / "other")
    other.aegis_dir.mkdir(parents=True)
    (other.aegis_dir / "monitor").symlink_to(tmp_path)
    with pytest.raises(RefusedError, match="monitor-metrics"):
        write_metrics(other, windows=[], incidents=[])


# -- the Grafana dashboard -------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan"}  # fmt: skip


def _exported(metric_families) -> dict[str, set[str]]:
    """Per family, the sample names it exposes (a counter ``x`` exposes ``x_total``...)."""
    return {f.name: {f.name + s for s in _SUFFIXES[f.type]} for f in metric_families}


@pytest.fixture
def exported(monkeypatch) -> dict[str, set[str]]:
    """What the gateway's registry and the monitor's textfile export, family by family."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    from aegis.serve.metrics import GatewayMetrics

    gateway = _exported(GatewayMetrics().registry.collect())
    monitor = _exported(families([], []))
    assert set(gateway).isdisjoint(monitor)
    assert "aegis_requests" in gateway and "aegis_monitor_signal" in monitor  # registries read
    return {**gateway, **monitor}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or variables)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # dashboard variables ($__rate_interval, $model)
    found = re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", e)
    return {m.group(1) for m in found if not m.group(2) and m.group(1) not in _KEYWORDS}


def _panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def test_metric_names_are_read_from_promql():
    expr = (
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(a_bucket{x="y{z}"}[$__rate_interval'
        "]))) / on (model) b_total > bool 2 * max without (c) (d offset 5m) + e:rule{le='1'}"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "d", "e:rule"}


def test_the_dashboard_queries_only_exported_metrics_and_covers_them(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    known = set().union(*exported.values())
    used: set[str] = set()

    for var in variables.values():
        if var["type"] != "query":
            continue
        assert var["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert selector, query
        names = metric_names(selector.group(1))
        assert names and names <= known, (var["name"], names - known)
        used |= names

    panels = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in _panels(dashboard["panels"])}) == len(_panels(dashboard["panels"]))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= known, (panel["title"], names - known)
            used |= names
    # every family of both registries is on the dashboard
    missing = [family for family, samples in exported.items() if not samples & used]
    assert missing == []
