"""The prediction log, the signed segment index and alerts, and their import into the audit log."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
from serve_helpers import MODEL
from sklearn.datasets import load_digits

from aegis.ledger import Action, Ledger
from aegis.serve.gateway import Gateway, GatewayConfig, GatewayError
from aegis.serve.predlog import read_log
from aegis.serve.records import alerts_path, import_records, segments_index, serve_dir

BODY = json.dumps({"inputs": [[0.0] * 64, [16.0] * 64]}).encode()
DIGITS = json.dumps({"inputs": load_digits().data[:4].tolist()}).encode()


def _gateway(served) -> Gateway:
    config = GatewayConfig(
        workspace=str(served.root), target=f"{MODEL}#prod", key=str(served.serving_key)
    )
    return Gateway(config)


def _predict(gw: Gateway, token: str, body: bytes = BODY) -> dict:
    client = gw.authenticate(f"Bearer {token}", scope="predict")
    return gw.predict(client, body, started=time.perf_counter())


def test_every_answered_row_is_logged_without_the_token(served):
    gw = _gateway(served)
    try:
        for _ in range(3):
            _predict(gw, served.tokens["app"])
    finally:
        gw.close()
    frame = read_log(serve_dir(served.env.ws) / "log")
    assert len(frame) == 6
    client = gw.clients.get("app")
    assert set(frame["client"]) == {client.id} and set(frame["version"]) == {"v1.0.0"}
    assert len(frame["probs"][0]) == 10 and abs(sum(frame["probs"][0]) - 1) < 1e-4
    # serve.log_inputs: summary (the default): a hash and a summary, not the pixels
    assert "inputs" not in frame and frame["input_sha256"].str.len().eq(64).all()
    assert frame["input_max"].tolist()[:2] == [0.0, 16.0]
    text = b"".join(p.read_bytes() for p in (serve_dir(served.env.ws)).rglob("*") if p.is_file())
    assert served.tokens["app"].encode() not in text


def test_segments_are_written_whole_and_signed(served):
    gw = _gateway(served)
    try:
        _predict(gw, served.tokens["app"])
        path = gw.predlog.flush()
    finally:
        gw.close()
    assert path is not None and not list(path.parent.glob(".*.tmp"))
    lines = segments_index(served.env.ws).read_text().splitlines()
    body = json.loads(lines[0])["body"]
    assert body["file"] == path.name and body["rows"] == 2
    import hashlib

    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_and_none_input_logging(served):
    gw = _gateway(served)
    try:
        for mode, expect in (("full", "inputs"), ("none", None)):
            # the policy is the served release's (signed params), as it was per request
            params = gw.served.params.model_copy(update={"log_inputs": mode})
            gw.served = replace(gw.served, params=params)
            _predict(gw, served.tokens["app"])
            path = gw.predlog.flush()
            import pandas as pd

            frame = pd.read_parquet(path)
            columns = set(frame.columns)
            assert (expect in columns) if expect else not columns & {"inputs", "input_sha256"}
            assert set(frame["log_inputs"]) == {mode}
            if mode == "full":
                assert frame["inputs"][1].tolist() == [16.0] * 64
    finally:
        gw.close()


def test_the_log_is_capped_oldest_first(served):
    gw = _gateway(served)
    try:
        for _ in range(3):
            _predict(gw, served.tokens["app"])
            size = gw.predlog.flush().stat().st_size
        # a cap below two segments keeps only the newest
        gw.predlog.params = gw.served.params.model_copy(update={"max_store_bytes": size})
        _predict(gw, served.tokens["app"])
        newest = gw.predlog.flush()
    finally:
        gw.close()
    left = sorted(p.name for p in newest.parent.glob("*.parquet"))
    assert left == [newest.name]


def test_import_audits_signed_records_once_and_refuses_forged_lines(served):
    gw = _gateway(served)
    try:
        _predict(gw, served.tokens["app"])
        gw.predlog.flush()
        gw.recorder.alert("reload", "test alert")
    finally:
        gw.close()
    # a forged alert: signed by the operator key, not a serving key
    from aegis.crypto.documents import sign_document
    from aegis.crypto.keys import load_private_key

    forged = sign_document(load_private_key(served.env.operator_key),
                           {"kind": "aegis-serve-alert/1", "check": "x"})  # fmt: skip
    with alerts_path(served.env.ws).open("a") as fh:
        fh.write(json.dumps(forged) + "\n{broken\n")
    ledger = Ledger.load(served.env.ws)
    done = import_records(ledger, actor=ledger.pipeline_entry().key_id)
    assert (done.alerts, done.segments, done.refused) == (1, 1, 2)
    entry = ledger.log.by_action(Action.SERVE_RECORDS)[-1]
    assert entry.details["alerts"][0]["body"]["message"] == "test alert"
    again = import_records(ledger, actor=ledger.pipeline_entry().key_id)
    assert again.seq is None and (again.alerts, again.segments) == (0, 0)


def test_the_adversarial_policy_refuses_flagged_rows(served):
    gw = _gateway(served)
    try:
        if gw.served.detector is None:
            pytest.fail("the release carries no calibrated detector (metrics.json 'detector')")
        # a zero threshold flags every row that squeezing changes at all
        detector = replace(gw.served.detector, threshold=0.0)
        refuse = gw.served.params.model_copy(update={"on_adversarial": "refuse"})
        gw.served = replace(gw.served, detector=detector, params=refuse)
        with pytest.raises(GatewayError) as refused:
            _predict(gw, served.tokens["app"], DIGITS)
        assert (refused.value.status, refused.value.reason) == (422, "adversarial")
        flag = gw.served.params.model_copy(update={"on_adversarial": "flag"})
        gw.served = replace(gw.served, params=flag)
        assert _predict(gw, served.tokens["app"], DIGITS)["labels"]  # answered, logged
        # under flag the rows are scored off the request path, when the segment is written
        counted = gw.metrics.registry.get_sample_value
        gw.predlog.flush()
        assert counted("aegis_adversarial_flags_total", {"action": "flag"}) == 4
    finally:
        gw.close()
    frame = read_log(serve_dir(served.env.ws) / "log")
    assert len(frame) == 8 and frame["flagged"].all() and np.isfinite(frame["score"]).all()
    # the same rows scored inline (refuse) and deferred in a batch (flag) score the same
    np.testing.assert_allclose(frame["score"][:4], frame["score"][4:], atol=1e-5)


def test_a_planted_symlink_for_the_serve_directory_is_refused(served, tmp_path):
    from aegis.errors import UnsafeFileError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    serve_dir(served.env.ws).symlink_to(elsewhere)
    with pytest.raises(UnsafeFileError, match="symlink"):
        _gateway(served)
    assert not list(elsewhere.iterdir())
