"""``aegis serve`` refuses to start, with one line and the check named, before a port opens."""

from __future__ import annotations

import socket

import pytest
from registry_helpers import aegis
from serve_helpers import ROW_OF_ZEROS, Gateway, call
from services import free_port

pytestmark = pytest.mark.slow


def _serve(served, *args: str, key=None):
    key = key or served.serving_key
    return aegis(served.root, "serve", "--port", str(free_port()), "--key", str(key), *args,
                 timeout=120)  # fmt: skip


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_tampered_prod_is_refused_at_start(served):
    config = served.env.release_dir(1) / "model" / "config.json"
    config.write_text(config.read_text().replace('"classes"', '"classes" ', 1))
    result = _serve(served)
    assert result.returncode == 1
    assert "integrity" in _one_line(result)


def test_a_missing_release_directory_is_refused_not_fetched(served):
    import shutil

    shutil.rmtree(served.env.release_dir(1))
    result = _serve(served)
    assert result.returncode == 1 and "fetch" in _one_line(result)
    assert not served.env.release_dir(1).exists()  # the gateway wrote nothing


@pytest.mark.parametrize("role", ["operator", "pipeline"])
def test_only_a_serving_key_serves(served, role):
    key = (
        served.env.operator_key if role == "operator" else served.root / ".aegis/keys/pipeline.pem"
    )
    result = _serve(served, key=key)
    assert result.returncode == 1
    assert "signer" in _one_line(result) and "serving" in result.stderr


def test_a_revoked_serving_key_is_refused(served, cli):
    result = cli(
        "trust", "revoke", "gateway", "--reason", "host lost", "--admin-key",
        str(served.env.admin_key), cwd=served.root,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert _serve(served).returncode == 1


def test_usage_errors_are_exit_2(served, cli):
    # in-process: each of these is refused before a port opens
    key = ("--key", str(served.serving_key))
    no_redis = cli("serve", "--workers", "2", *key, cwd=served.root)
    assert no_redis.code == 2 and "--redis" in no_redis.err
    assert cli("serve", "nothing@v9", *key, cwd=served.root).code == 1  # registry
    assert cli("serve", "not a target", *key, cwd=served.root).code == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port), *key, cwd=served.root)
    assert result.code == 2 and "cannot listen" in result.err


def test_no_prod_is_refused(served, tmp_path):
    result = _serve(served, "digits-model#staging")
    assert result.returncode == 1 and "registry" in _one_line(result)


def test_two_workers_share_one_quota_through_redis(served, redis_url):
    gw = Gateway(served, workers=2, redis=redis_url)
    token = served.tokens["tiny"]  # 6 rows a day, whichever worker answers
    try:
        statuses = [
            call(gw.url, "/v1/predict", token=token, body=ROW_OF_ZEROS)[0] for _ in range(14)
        ]
        _, text, _ = call(gw.url, "/metrics", token=served.tokens["ops"])
    finally:
        gw.stop()
    assert statuses.count(200) == 6 and statuses.count(429) == 8
    # the metrics of both workers, aggregated (multiprocess mode)
    assert 'aegis_requests_total{client="tiny",status="200"} 6.0' in text


def test_two_gateways_on_one_redis_share_the_quota(served, redis_url):
    first = Gateway(served, redis=redis_url)
    try:
        second = Gateway(served, redis=redis_url)
    except BaseException:
        first.stop()
        raise
    token = served.tokens["tiny"]
    try:
        statuses = [
            call(gw.url, "/v1/predict", token=token, body=ROW_OF_ZEROS)[0]
            for _ in range(5) for gw in (first, second)
        ]  # fmt: skip
    finally:
        first.stop()
        second.stop()
    assert statuses.count(200) == 6, statuses
