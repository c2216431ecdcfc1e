"""The gateway's extraction monitor and watermark, in process, on a real served release."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_helpers import ask, in_process_gateway
from services import read_events

from aegis.attack.extract import knockoff_rows
from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.serve.extraction import extraction_reports
from aegis.serve.gateway import GatewayError
from aegis.serve.predlog import read_log
from aegis.serve.records import alerts_path, segments_index, serve_dir


def _knockoff(n: int) -> np.ndarray:
    return knockoff_rows(n, features=64, low=0.0, high=16.0, seed=0)


def test_an_out_of_domain_client_is_flagged_alerted_and_listed(
    served, cli, prefect_server, monkeypatch
):
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    gw = in_process_gateway(served)
    try:
        assert gw.served.extraction is not None  # signed into metrics.json at evaluation
        for start in range(0, 40, 8):
            ask(gw, served.tokens["app"], _knockoff(40)[start : start + 8])
        gw.predlog.flush()
        app_id = gw.clients.get("app").id
        assert gw.extraction.flagged(app_id)
        ask(gw, served.tokens["app"], _knockoff(2))  # alert: still answered
    finally:
        gw.close()  # sends what the watcher has not sent yet

    def ours(events):
        return any(e["resource"]["aegis.client"] == app_id and e["payload"]["queries"] >= 20
                   for e in events)  # fmt: skip

    assert ours(read_events(prefect_server, "aegis.extraction.flagged", ours))
    text = alerts_path(served.env.ws).read_text()
    alerts = [json.loads(line)["body"] for line in text.splitlines()]
    assert any(a["check"] == "extraction" and a["signal"] == "ood" for a in alerts)
    result = cli("keys", "api", "list", "--json", cwd=served.root)
    rows = {r["name"]: r for r in json.loads(result.out)}
    assert rows["app"]["flagged"] is True and rows["app"]["queries"] >= 40
    assert rows["app"]["extraction_score"] >= 1 and rows["ops"]["flagged"] is False


@pytest.mark.parametrize("policy", ["block", "throttle"])
def test_policy_acts_on_the_flagged_client_only(served, policy):
    gw = in_process_gateway(served, on_extraction=policy, throttle_factor=10000)
    try:
        ask(gw, served.tokens["app"], _knockoff(40))
        gw.predlog.flush()
        if policy == "block":
            with pytest.raises(GatewayError) as refused:
                ask(gw, served.tokens["app"], _knockoff(1))
            assert refused.value.status == 403 and refused.value.reason == "extraction"
        else:  # the rate is divided (100000/s by 10000): 11 rows never fit it now
            with pytest.raises(GatewayError) as refused:
                ask(gw, served.tokens["app"], _knockoff(11))
            assert refused.value.status == 422 and "10/s" in str(refused.value)
        from sklearn.datasets import load_digits

        assert len(ask(gw, served.tokens["ops"], load_digits().data[:11])["labels"]) == 11
    finally:
        gw.close()


def test_histories_survive_a_restart_and_a_tampered_one_stops_thein_process_gateway(served):
    gw = in_process_gateway(served)
    try:
        ask(gw, served.tokens["app"], _knockoff(30))
        gw.predlog.flush()
    finally:
        gw.close()
    gw = in_process_gateway(served)  # adopts the saved history
    try:
        assert gw.extraction.flagged(gw.clients.get("app").id)
    finally:
        gw.close()
    ledger = Ledger.load(served.env.ws)
    from aegis.serve.clients import load_clients

    app_id = load_clients(ledger).get("app").id
    assert extraction_reports(served.env.ws, ledger.trust)[app_id].queries == 30
    state = next((serve_dir(served.env.ws) / "extraction").glob("state-*.json"))
    document = json.loads(state.read_text())
    first = next(iter(document["body"]["clients"]))
    document["body"]["clients"][first]["flagged_at"] = None  # an attacker clears their flag
    state.write_text(json.dumps(document))
    with pytest.raises(RefusedError) as refused:
        in_process_gateway(served)
    assert refused.value.check == "extraction-state"


def test_watermarked_answers_are_wrong_and_signed_with_their_segment(served):
    from sklearn.datasets import load_digits

    rows = load_digits().data[:400]
    gw = in_process_gateway(served, watermark_rate=0.05)
    try:
        answered = []
        for start in range(0, len(rows), 50):
            answered += ask(gw, served.tokens["app"], rows[start : start + 50])["labels"]
        gw.predlog.flush()
    finally:
        gw.close()
    lines = [json.loads(line) for line in segments_index(served.env.ws).read_text().splitlines()]
    marks = [m for line in lines for m in line["body"].get("watermarks", [])]
    assert 5 <= len(marks) <= 40
    frame = read_log(serve_dir(served.env.ws) / "log")
    assert int(frame["watermarked"].sum()) == len(marks)
    for mark in marks:
        i = next(j for j in range(len(rows)) if rows[j].tolist() == mark["input"])
        assert answered[i] == mark["served"] != mark["label"]


def test_watermark_verify_tells_a_stolen_copy_from_an_independent_model(served, cli, tmp_path):
    from sklearn.datasets import load_digits

    from aegis.attack.surrogate import fit_surrogate

    x, y = load_digits(return_X_y=True)
    gw = in_process_gateway(served, watermark_rate=0.05)
    try:
        answered = []
        for start in range(0, 600, 100):
            answered += ask(gw, served.tokens["app"], x[start : start + 100])["labels"]
        gw.predlog.flush()
    finally:
        gw.close()
    fit_surrogate("forest", x[:600], np.array(answered), classes=10).save(tmp_path / "stolen")
    fit_surrogate("forest", x[:600], y[:600], classes=10).save(tmp_path / "independent")
    stolen = cli("watermark", "verify", tmp_path / "stolen", "--json", cwd=served.root)
    assert stolen.code == 0, stolen.err
    result = json.loads(stolen.out)
    assert result["suspect_kind"] == "surrogate" and result["null_agreement"] == pytest.approx(
        1 / 9
    )
    assert result["queries"] >= 15 and result["p_value"] < 1e-6
    independent = json.loads(cli("watermark", "verify", tmp_path / "independent", "--json",
                                 cwd=served.root).out)  # fmt: skip
    assert independent["p_value"] > 0.01
    release = served.root / "releases" / "digits-model" / "v2"  # our own, never served
    ours = json.loads(cli("watermark", "verify", release, "--json", cwd=served.root).out)
    assert ours["suspect_kind"] == "checkpoint" and ours["p_value"] > 0.01
    index = segments_index(served.env.ws)
    lines = index.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "watermarks" in line)
    document = json.loads(lines[first])
    document["body"]["watermarks"][0]["served"] = (
        document["body"]["watermarks"][0]["served"] + 1
    ) % 10
    lines[first] = json.dumps(document)
    index.write_text("\n".join(lines) + "\n")
    tampered = cli("watermark", "verify", tmp_path / "stolen", cwd=served.root)
    assert tampered.code == 1 and "watermark-ledger" in tampered.err
