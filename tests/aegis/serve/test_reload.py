"""The gateway follows the registry: promote, rollback, a tampered new prod, a revoked client."""

from __future__ import annotations

import threading

import pytest
from registry_helpers import aegis, promote_in_turn
from serve_helpers import MODEL, Gateway, call, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROW = {"inputs": [[0.0] * 64]}


def _version(gw: Gateway, token: str) -> str:
    status, body, _ = call(gw.url, "/v1/predict", token=token, body=ROW)
    assert status == 200, body
    return body["version"]


def test_promote_then_rollback_while_serving_drops_no_request(served):
    gw = Gateway(served)
    token = served.tokens["app"]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:  # one client calling all along, as production traffic would
        while not stop.is_set():
            status, body, _ = call(gw.url, "/v1/predict", token=token, body=ROW)
            seen.append((status, body.get("version", "") if isinstance(body, dict) else ""))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: len(seen) > 5, what="traffic")
        promote_in_turn(served.env.ws, MODEL, ["v2.0.0"])
        wait_for(lambda: seen[-1][1] == "v2.0.0", what="the promoted version served")
        result = aegis(
            served.root, "rollback", "--to", f"{MODEL}@v1", "--reason", "drill",
            "--key", str(served.env.operator_key),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        wait_for(lambda: seen[-1][1] == "v1.0.0", what="the rolled-back version served")
    finally:
        stop.set()
        worker.join()
        gw.stop()
    assert {status for status, _ in seen} == {200}
    versions = [v for _, v in seen]
    assert "v2.0.0" in versions and versions[-1] == "v1.0.0"


def test_a_tampered_new_prod_is_not_loaded_and_is_alerted(served, cli):
    gw = Gateway(served)
    token = served.tokens["ops"]
    try:
        weights = served.env.release_dir(2) / "model" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01
        weights.write_bytes(bytes(data))
        promote_in_turn(served.env.ws, MODEL, ["v2.0.0"])

        def refused() -> bool:
            _, text, _ = call(gw.url, "/metrics", token=token)
            return 'aegis_model_reloads_total{result="refused"}' in text

        wait_for(refused, what="the refused reload counted")
        assert _version(gw, token) == "v1.0.0"  # the old model keeps serving
    finally:
        gw.stop()
    alerts = (served.root / ".aegis" / "serve" / "alerts.jsonl").read_text().splitlines()
    assert any("digits-model@v2.0.0" in line and '"check":"reload"' in line for line in alerts)
    # the pipeline imports the signed alert into the audit log
    result = cli("audit", "import-serving", "--json", cwd=served.root)
    assert result.code == 0, result.err
    assert '"alerts": 1' in result.out
    again = cli("audit", "import-serving", "--json", cwd=served.root)
    assert '"alerts": 0' in again.out  # imported once


def test_a_revoked_client_is_refused_from_the_next_request(served, cli):
    gw = Gateway(served)
    token = served.tokens["gone"]
    try:
        assert call(gw.url, "/v1/predict", token=token, body=ROW)[0] == 200
        result = cli(
            "keys", "api", "revoke", "gone", "--reason", "leaked", "--key",
            str(served.env.operator_key), cwd=served.root,
        )  # fmt: skip
        assert result.code == 0, result.err
        status, body, _ = call(gw.url, "/v1/predict", token=token, body=ROW)
        assert (status, body["error"]) == (403, "revoked")
        # a client made while serving is accepted at once, too
        made = cli(
            "keys", "api", "new", "--name", "late", "--key", str(served.env.operator_key),
            cwd=served.root,
        )  # fmt: skip
        late = made.out.strip().splitlines()[-1]
        assert call(gw.url, "/v1/predict", token=late, body=ROW)[0] == 200
    finally:
        gw.stop()
