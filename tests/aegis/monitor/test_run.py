"""The monitor's pass over a real gateway's prediction log, on a real served release."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from monitor_helpers import clean_rows, serve_rows
from serve_helpers import MODEL

from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.monitor.incidents import incidents
from aegis.monitor.run import monitor_pass
from aegis.monitor.state import state_path
from aegis.serve.records import segments_index


def _pass(served, key, **kwargs):
    return monitor_pass(Ledger.load(served.env.ws), key_path=key, **kwargs)


def test_clean_traffic_opens_nothing_and_a_shift_opens_one_incident(served, monitor_key, cli):
    clean = clean_rows(served)
    serve_rows(served, clean[:100])
    first = _pass(served, monitor_key)
    assert first.windows == {"v1.0.0": 2} and not first.incidents
    saved = state_path(served.env.ws).read_bytes()
    serve_rows(served, 16.0 - clean[100:200])  # inverted digits: far outside the reference
    second = _pass(served, monitor_key)
    assert second.windows == {"v1.0.0": 2}
    [incident] = second.incidents  # every signal confirmed on one window: one incident
    assert "ood_count" in incident.signals
    assert incident.action == "throttle" and incident.clients == [served.clients["app"]]
    assert len(incident.windows) == 2 and incident.time_to_detect_s >= 0
    assert min(incident.values["ood_count"]) > incident.thresholds["ood_count"]
    assert incident.top_client_share == 1.0  # one client sent it all
    assert not _pass(served, monitor_key).windows  # nothing new
    state_path(served.env.ws).write_bytes(saved)  # an older copy of the state
    again = _pass(served, monitor_key)
    assert again.windows == {"v1.0.0": 2} and not again.incidents  # known: not reported again
    assert [i.id for i in incidents(Ledger.load(served.env.ws))].count(incident.id) == 1
    listed = json.loads(cli("incidents", "list", "--json", cwd=served.root).out)
    assert incident.id in {i["id"] for i in listed}
    shown = cli("incidents", "show", incident.id, "--json", cwd=served.root)
    assert "ood_count" in json.loads(shown.out)["signals"]
    status = json.loads(cli("status", "--json", cwd=served.root).out)
    assert incident.id in {i["id"] for i in status["incidents"]}


def test_windows_span_segments_and_a_breach_is_confirmed_across_passes(served, monitor_key):
    clean = clean_rows(served)
    serve_rows(served, clean[:75], batch=30, segment=True)  # segments of 30, 30 and 15 rows
    assert _pass(served, monitor_key).windows == {"v1.0.0": 1}  # the cursor: mid-segment
    serve_rows(served, 16.0 - clean[75:100], batch=25, segment=True)
    first = _pass(served, monitor_key)  # rows 50-99: 25 clean, 25 inverted
    assert first.windows == {"v1.0.0": 1} and not first.incidents
    assert first.breaches["v1.0.0"]["ood_count"] == 1  # one breaching window: not confirmed
    serve_rows(served, 16.0 - clean[100:150], batch=50, segment=True)
    second = _pass(served, monitor_key)
    [incident] = second.incidents
    assert len(incident.windows) == 2 and "ood_count" in incident.signals
    segments = {json.loads(line)["body"]["first"] for line in
                segments_index(served.env.ws).read_text().splitlines()}  # fmt: skip
    assert incident.first_bad[:19] >= min(segments)[:19]


def test_a_segment_gone_out_of_order_is_refused_and_one_the_cap_took_is_skipped(
    served, monitor_key
):
    serve_rows(served, clean_rows(served)[:90], batch=30, segment=True)
    names = [json.loads(line)["body"]["file"]
             for line in segments_index(served.env.ws).read_text().splitlines()]  # fmt: skip
    directory = segments_index(served.env.ws).parent
    middle = (directory / names[1]).read_bytes()
    (directory / names[1]).unlink()
    with pytest.raises(RefusedError, match="missing while an older segment remains"):
        _pass(served, monitor_key)
    (directory / names[1]).write_bytes(middle)
    (directory / names[0]).unlink()  # as the size cap does: the oldest first
    report = _pass(served, monitor_key)
    assert report.skipped_segments == 1 and report.windows == {"v1.0.0": 1}


def test_a_changed_segment_or_index_is_refused_before_anything_is_read(served, monitor_key):
    serve_rows(served, clean_rows(served)[:60])
    segment = next(segments_index(served.env.ws).parent.glob("*.parquet"))
    original = segment.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(RefusedError) as refused:
        _pass(served, monitor_key)
    assert refused.value.check == "prediction-log" and "SHA-256" in str(refused.value)
    segment.unlink()
    segment.symlink_to(served.root / "params.yaml")  # a planted link in its place
    with pytest.raises(RefusedError, match="symbolic link"):
        _pass(served, monitor_key)
    segment.unlink()
    segment.write_bytes(original)
    index = segments_index(served.env.ws)
    line = json.loads(index.read_text().splitlines()[0])
    line["body"]["rows"] += 1
    index.write_text(json.dumps(line) + "\n")
    with pytest.raises(RefusedError, match="does not verify"):
        _pass(served, monitor_key)
    assert not state_path(served.env.ws).exists()  # nothing was recorded


def test_an_edited_state_is_refused(served, monitor_key):
    serve_rows(served, clean_rows(served)[:50])
    _pass(served, monitor_key)
    path = state_path(served.env.ws)
    document = json.loads(path.read_text())
    document["body"]["versions"][f"{MODEL}@v1.0.0"]["line"] = 99  # skip what comes next
    path.write_text(json.dumps(document))
    with pytest.raises(RefusedError) as refused:
        _pass(served, monitor_key)
    assert refused.value.check == "monitor-state"


def test_the_monitor_key_is_needed_and_can_neither_promote_nor_approve(
    served, monitor_key, cli, prefect_server
):
    from registry_helpers import aegis, set_promote

    set_promote(served.env)
    result = cli("monitor", "--key", str(served.env.operator_key), cwd=served.root)
    assert result.code == 1 and "signer" in result.err
    target, env = f"{MODEL}@v2.0.0", {"PREFECT_API_URL": prefect_server}  # flows run there
    promote = aegis(served.root, "promote", target, "--key", monitor_key, env=env)
    assert promote.returncode == 1 and "role monitor, not operator" in promote.stderr
    request = aegis(served.root, "promote", target, "--key", served.env.operator_key, env=env)
    assert request.returncode == 0, request.stderr
    approve = aegis(served.root, "approve", target, "--key", monitor_key, env=env)
    assert approve.returncode == 1
    assert "(monitor, active) is not a current approver" in approve.stderr
    shutil.rmtree(segments_index(served.env.ws).parent, ignore_errors=True)
    result = cli("monitor", "--key", str(monitor_key), "--json", cwd=served.root)
    assert result.code == 0 and json.loads(result.out)["windows"] == {}


def test_logged_inputs_give_input_psi_and_a_darkened_delivery_breaches_it(served, monitor_key):
    from aegis.monitor.windows import read_windows
    from aegis.serve.predlog import read_log

    clean = clean_rows(served)
    serve_rows(served, clean[:100])
    assert not _pass(served, monitor_key).incidents
    log = read_log(segments_index(served.env.ws).parent)
    assert not log["extracting"].any()  # clean keys: none flagged for extraction
    [first, second] = read_windows(served.env.ws)
    for record in (first, second):  # summary logging (the default): each row's mean, min, max
        assert {"input_psi", "latency_shift"} <= set(record.values)
        assert record.values["input_psi"] <= record.thresholds["input_psi"]
    serve_rows(served, np.round(clean[100:200] * 0.4))  # the same forms, far fainter
    [incident] = _pass(served, monitor_key).incidents
    assert "input_psi" in incident.signals
    assert min(incident.values["input_psi"]) > incident.thresholds["input_psi"]


def test_latency_ranks_each_window_against_the_versions_own_history():
    from aegis.evaluate.monitoring import LATENCY_HISTORY
    from aegis.monitor.feed import Rows
    from aegis.monitor.run import _latency
    from aegis.monitor.state import VersionState

    rng = np.random.default_rng(0)
    n, count = 50, 8  # ten five-row requests per window
    requests = np.array([f"r{i // 5}#{i % 5}" for i in range(n * count)])
    latency = np.repeat(rng.gamma(4.0, 2.0, size=n * count // 5), 5)
    latency[-2 * n :] *= 3  # the last two windows' requests are slower
    rows = Rows.empty()
    rows = Rows(**{**rows.__dict__, "requests": requests, "latency": latency})
    cursor = VersionState()
    values = _latency(cursor, rows, count, n)
    assert (values[:3] == 0).all()  # fewer than 30 requests before them: no signal yet
    assert (values[3:6] < 2).all() and (values[6:] > 3).all()
    assert len(cursor.latency) == n * count // 5 <= LATENCY_HISTORY  # carried to the next pass
