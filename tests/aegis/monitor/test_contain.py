"""Containment: the policy's decision, and the monitor's rollback, throttle and feedback
on a real served release (v1 then v2 in prod) through an in-process gateway."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monitor_helpers import clean_rows, serve_rows
from registry_helpers import promote_in_turn
from serve_helpers import MODEL, in_process_gateway

from aegis.config import MonitorParams
from aegis.ledger import Action, Ledger
from aegis.monitor.contain import decide
from aegis.monitor.incidents import incidents
from aegis.monitor.prom import metrics_path
from aegis.monitor.run import monitor_pass
from aegis.monitor.windows import read_windows
from aegis.registry.tags import read_registry


def test_the_strongest_action_wins_and_one_key_only_throttles_itself():
    params = MonitorParams()
    spread = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert decide(["ood_count", "softmax_ks"], spread, params).action == "rollback"
    throttle = decide(["ood_count"], spread, params)
    assert throttle.action == "throttle" and throttle.clients == ["a", "b"]  # >= 25 % each
    many = decide(["ood_count"], {"a": 0.2, "b": 0.2, "c": 0.1, "d": 0.3, "e": 0.2}, params)
    assert many.clients == ["d"]  # none has 25 %: the largest share
    single = decide(["softmax_ks", "label_chi2"], {"a": 0.9, "b": 0.1}, params)
    assert single.action == "throttle" and single.clients == ["a"] and "one key" in single.why
    quiet = MonitorParams(actions={"softmax_ks": "alert"})
    assert decide(["softmax_ks"], {"a": 1.0}, quiet).action == "alert"  # alert stays alert
    retrain = MonitorParams(actions={"label_chi2": "retrain"})
    assert decide(["label_chi2", "ood_count"], spread, retrain).action == "retrain"


@pytest.fixture
def v2_prod(served):
    promote_in_turn(served.env.ws, MODEL, ["v2.0.0"])  # v1 held prod before: known-good
    return served


def _pass(served, key, **kwargs):
    return monitor_pass(Ledger.load(served.env.ws), key_path=key, **kwargs)


def test_a_shift_from_many_keys_rolls_back_to_the_known_good_version_and_marks_it_suspect(
    v2_prod, monitor_key, cli
):
    served = v2_prod
    serve_rows(served, 16.0 - clean_rows(served)[:100], clients=("app", "ops"))
    report = _pass(served, monitor_key)
    [incident] = report.incidents
    assert incident.action == "rollback" and incident.version == "v2.0.0"
    [done] = report.contained
    assert done["result"] == "rolled-back" and done["to_version"] == "v1.0.0"
    assert done["served"] == "registry" and done["windows"] == incident.windows
    ledger = Ledger.load(served.env.ws)
    state = read_registry(ledger, MODEL)
    assert state.prod == "v1.0.0" and state.suspect == {"v2.0.0"} and not state.bad
    rolled = next(ledger.log.scan((Action.done("rollback"),), reverse=True))
    assert rolled.actor == incident.actor  # the monitor's key, not an operator's
    [recorded] = incidents(ledger)
    assert recorded.contained and recorded.time_to_contain_s >= recorded.time_to_detect_s
    gw = in_process_gateway(served)  # a gateway started now serves the known-good version
    try:
        assert gw.served.version == "v1.0.0"
    finally:
        gw.close()
    again = _pass(served, monitor_key)  # the breach is known: no second rollback
    assert not again.incidents and not again.contained
    windows = read_windows(served.env.ws)
    assert len(windows) == 2 and all(w.breached for w in windows)
    assert all("adversarial_count" in w.values for w in windows)  # the detector's flags too
    metrics = metrics_path(served.env.ws).read_text()
    [line] = [x for x in metrics.splitlines() if x.startswith("aegis_monitor_incidents_total")]
    assert 'action="rollback"' in line and line.endswith(" 1.0")
    status = cli("status", "--json", cwd=served.root)
    assert "v2.0.0" in json.loads(status.out)["models"][0]["suspect"]
    # v1 was put back by the monitor: one automatic rollback per model until an operator acts
    serve_rows(served, 16.0 - clean_rows(served)[100:200], clients=("app", "ops"))
    chained = _pass(served, monitor_key)
    [second] = chained.incidents
    assert second.version == "v1.0.0" and chained.contained[0]["result"] == "refused"
    assert "waits for an operator" in chained.contained[0]["reason"]
    # the monitor's key may roll back only through the monitor: an operator command refuses it
    refused = cli("rollback", "--key", str(monitor_key), "--reason", "try", cwd=served.root)
    assert refused.code == 1 and "signer" in refused.err


def test_a_shift_from_one_key_throttles_that_key_alone_at_the_gateway(v2_prod, monitor_key):
    served = v2_prod
    serve_rows(served, 16.0 - clean_rows(served)[:100], clients=("app",))
    report = _pass(served, monitor_key)
    [incident] = report.incidents
    assert incident.action == "throttle" and incident.clients == [served.clients["app"]]
    assert report.contained[0]["result"] == "throttled"
    assert read_registry(Ledger.load(served.env.ws), MODEL).prod == "v2.0.0"  # not burnt
    gw = in_process_gateway(served)
    try:
        app = gw.authenticate(f"Bearer {served.tokens['app']}", scope="predict")
        ops = gw.authenticate(f"Bearer {served.tokens['ops']}", scope="predict")
        factor = gw.served.params.throttle_factor
        assert gw._rate_policy(app, gw.served).rate.count == app.rate.count // factor
        assert gw._rate_policy(ops, gw.served).rate.count == ops.rate.count
    finally:
        gw.close()


def test_wrong_feedback_labels_breach_accuracy_and_bad_feedback_files_are_refused(
    v2_prod, monitor_key, cli, tmp_path
):
    served = v2_prod
    clean = clean_rows(served)[:100]
    ids = serve_rows(served, clean, clients=("app", "ops"))
    gw = in_process_gateway(served)
    try:
        predicted = gw.served.predict(clean).labels
    finally:
        gw.close()
    wrong = (np.asarray(predicted) + 1) % 10  # every answer contradicted
    lines = [{"request": r, "labels": wrong[i * 25 : (i + 1) * 25].tolist()}
             for i, r in enumerate(ids)]  # fmt: skip
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for bad, why in [
        ('{"request": "x", "labels": [true]}\n', "line 1"),
        ('{"request": "x", "labels": [9223372036854775808]}\n', "line 1"),
        ("not json\n", "line 1"),
        (json.dumps(lines[0]) + "\n" + json.dumps(lines[0]) + "\n", "twice"),
    ]:
        path = tmp_path / "bad.jsonl"
        path.write_text(bad)
        result = cli("monitor", "--key", str(monitor_key), "--feedback", str(path),
                     cwd=served.root)  # fmt: skip
        assert result.code == 2 and why in result.err
    link = tmp_path / "link.jsonl"
    link.symlink_to(feedback)
    result = cli("monitor", "--key", str(monitor_key), "--feedback", str(link), cwd=served.root)
    assert result.code == 2 and "symbolic link" in result.err
    assert not incidents(Ledger.load(served.env.ws))  # nothing was read or recorded
    out = cli("monitor", "--key", str(monitor_key), "--feedback", str(feedback), "--json",
              cwd=served.root)  # fmt: skip
    assert out.code == 0, out.err
    [incident] = json.loads(out.out)["incidents"]
    assert incident["signals"] == ["feedback_accuracy"] and incident["action"] == "rollback"
    assert read_registry(Ledger.load(served.env.ws), MODEL).prod == "v1.0.0"


def test_api_feedback_labels_only_the_senders_rows_and_one_lying_key_is_only_throttled(
    v2_prod, monitor_key
):
    from aegis.errors import RefusedError
    from aegis.serve.gateway import GatewayError
    from aegis.serve.records import feedback_path

    served = v2_prod
    clean = clean_rows(served)[:100]
    ids = serve_rows(served, clean, clients=("app", "ops"))  # app, ops, app, ops
    gw = in_process_gateway(served)
    try:
        wrong = (np.asarray(gw.served.predict(clean).labels) + 1) % 10  # every answer contradicted
        app = gw.authenticate(f"Bearer {served.tokens['app']}", scope="predict")
        ops = gw.authenticate(f"Bearer {served.tokens['ops']}", scope="predict")
        for i in (0, 2):  # app's requests
            body = json.dumps({"request": ids[i], "labels": wrong[i * 25 : (i + 1) * 25].tolist()})
            assert gw.feedback(ops, body.encode())["labels"] == 25  # first, but not its answers
            gw.feedback(app, body.encode())  # app lies about its own answers
        with pytest.raises(GatewayError, match="not an id this gateway hands out"):
            gw.feedback(app, b'{"request": "../x", "labels": [1]}')
    finally:
        gw.close()
    report = _pass(served, monitor_key)
    [incident] = report.incidents
    assert incident.signals == ["feedback_accuracy"]
    # the labelled rows are all app's, though app sent half the traffic: one key's word
    # throttles that key and burns no version
    assert incident.action == "throttle" and incident.clients == [served.clients["app"]]
    assert read_registry(Ledger.load(served.env.ws), MODEL).prod == "v2.0.0"
    path = feedback_path(served.env.ws)
    lines = path.read_text().splitlines()
    forged = json.loads(lines[-1])  # app's line, relabelled: the signature no longer holds
    forged["body"]["labels"] = [0] * 25
    path.write_text("\n".join([*lines, json.dumps(forged), "not json"]) + "\n")
    from aegis.monitor.feedback import served_feedback

    labels, skipped = served_feedback(Ledger.load(served.env.ws))
    assert skipped == 2 and len(labels) == 4  # each sender's line per request, no forgery
    assert labels[ids[2], served.clients["app"]].labels == wrong[50:75].tolist()
    path.unlink()
    path.symlink_to(served.root / "params.yaml")  # a planted link stops the pass
    with pytest.raises(RefusedError) as refused:
        _pass(served, monitor_key)
    assert refused.value.check == "feedback" and "symbolic link" in str(refused.value)


def test_a_rollback_with_no_known_good_version_is_recorded_as_refused(served, monitor_key):
    serve_rows(served, 16.0 - clean_rows(served)[:100], clients=("app", "ops"))  # v1: no earlier
    report = _pass(served, monitor_key)
    [incident] = report.incidents
    assert incident.action == "rollback"
    [done] = report.contained
    assert done["result"] == "refused" and "no earlier prod version" in done["reason"]
    assert read_registry(Ledger.load(served.env.ws), MODEL).prod == "v1.0.0"
    assert incidents(Ledger.load(served.env.ws))[0].contained is None


def test_a_gateway_url_that_is_not_http_is_a_usage_error(served, monitor_key, cli):
    result = cli("monitor", "--key", str(monitor_key), "--gateway", "file:///etc/passwd",
                 cwd=served.root)  # fmt: skip
    assert result.code == 2 and "http://" in result.err
