"""Every status of the gateway, with real HTTP requests to the session's uvicorn server."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest
from serve_helpers import call
from sklearn.datasets import load_digits

from aegis.serve.gateway import MAX_BODY

DIGITS = load_digits()
ROWS = DIGITS.data[:8].tolist()
COLUMNS = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]


def test_predict_answers_labels_of_the_served_version(gateway, served_base):
    status, body, _ = call(
        gateway.url, "/v1/predict", token=served_base.tokens["app"], body={"inputs": ROWS}
    )
    assert status == 200, body
    assert body["version"] == "v1.0.0" and len(body["labels"]) == 8
    # the output policy (serve.output: label, the default) reveals no probabilities
    assert set(body) == {"labels", "version", "request"}
    # the model's own preprocessing (as training applied it) gives the same labels offline
    assert body["labels"] == offline_labels(served_base.env.release_dir(1) / "model", ROWS)


def offline_labels(model_dir, rows) -> list[int]:
    import numpy as np
    import pandas as pd
    import torch

    from aegis.train.checkpoint import load_checkpoint
    from aegis.train.data import to_tensors

    loaded = load_checkpoint(model_dir)
    frame = pd.DataFrame(rows, columns=COLUMNS).assign(label=0)
    x, _ = to_tensors(frame, np.arange(len(rows)), loaded.spec)
    with torch.no_grad():
        return loaded.model(x).argmax(dim=1).tolist()


def test_records_in_the_datasets_columns_give_the_same_answer(gateway, served_base):
    token = served_base.tokens["app"]
    records = [dict(zip(COLUMNS, row, strict=True)) for row in ROWS[:3]]
    _, by_rows, _ = call(gateway.url, "/v1/predict", token=token, body={"inputs": ROWS[:3]})
    status, by_records, _ = call(gateway.url, "/v1/predict", token=token, body={"records": records})
    assert status == 200 and by_records["labels"] == by_rows["labels"]


def test_model_endpoint(gateway, served_base):
    status, body, _ = call(gateway.url, "/v1/model", token=served_base.tokens["app"])
    assert status == 200
    assert body["name"] == "digits-model" and body["version"] == "v1.0.0"
    assert body["model_digest"].startswith("sha256:") and body["since"].endswith("Z")


def test_health_and_readiness_need_no_token(gateway):
    assert call(gateway.url, "/healthz")[0] == 200
    status, body, _ = call(gateway.url, "/readyz")
    assert status == 200 and body == {"status": "ready", "version": "v1.0.0"}


@pytest.mark.parametrize(
    "token, status, reason",
    [
        (None, 401, "unauthenticated"),
        ("aegis_" + "A" * 43, 401, "unauthenticated"),
        ("not a token at all", 401, "unauthenticated"),
    ],
)
def test_missing_or_wrong_tokens_are_401(gateway, token, status, reason):
    got, body, _ = call(gateway.url, "/v1/predict", token=token, body={"inputs": ROWS[:1]})
    assert (got, body["error"]) == (status, reason)


def test_a_scheme_other_than_bearer_is_401(gateway, served_base):
    got, _, _ = call(
        gateway.url, "/v1/predict", body={"inputs": ROWS[:1]},
        headers={"Authorization": "Basic " + served_base.tokens["app"]},
    )  # fmt: skip
    assert got == 401


def test_out_of_scope_is_403(gateway, served_base):
    got, body, _ = call(
        gateway.url, "/v1/predict", token=served_base.tokens["reader"], body={"inputs": ROWS[:1]}
    )
    assert (got, body["error"]) == (403, "scope")
    got, body, _ = call(gateway.url, "/metrics", token=served_base.tokens["app"])
    assert (got, body["error"]) == (403, "scope")


def _status_after_sending(url: str, token: str, framing: str, body: bytes) -> int:
    """Sends a request head and ``body``, sends nothing more, reads the status line.

    The gateway answers 413 without reading the rest of an oversized body, so a
    client still sending would race its close (a broken pipe): this one stops first.
    """
    where = urlsplit(url)
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {where.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n")  # fmt: skip
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        return int(sock.makefile("rb").readline().split()[1])


def test_oversized_bodies_are_413(gateway, served_base):
    token = served_base.tokens["app"]
    declared = f"Content-Length: {MAX_BODY + 1}"
    assert _status_after_sending(gateway.url, token, declared, b"") == 413  # nothing read
    # no length declared: refused once the chunks read pass the limit
    chunk = 64 * 1024
    chunks = b"".join(b"%x\r\n" % chunk + b" " * chunk + b"\r\n"
                      for _ in range(MAX_BODY // chunk + 1))  # fmt: skip
    assert _status_after_sending(gateway.url, token, "Transfer-Encoding: chunked", chunks) == 413
    # one byte under the limit is read whole (and refused only as not JSON)
    small = b'{"inputs": ' + b" " * (MAX_BODY - 13) + b"}"
    assert len(small) < MAX_BODY
    assert call(gateway.url, "/v1/predict", token=token, raw=small)[0] == 422


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"inputs": [[0.0] * 63]}, "input"),  # one feature short
        ({"inputs": [[0.0] * 64, [0.0] * 65]}, "input"),  # ragged
        ({"inputs": [[99.0] * 64]}, "input"),  # far outside the training range
        ({"inputs": [[-5.0] * 64]}, "input"),
        ({"inputs": [["1"] * 64]}, "malformed"),  # strings are not numbers
        ({"inputs": [[True] * 64]}, "malformed"),
        ({"inputs": []}, "batch"),
        ({"inputs": [[0.0] * 64] * 257}, "batch"),  # serve.max_batch is 256
        ({"records": [{"pixel_0_0": 1.0}]}, "input"),  # missing columns
        ({"records": [dict.fromkeys([*COLUMNS, "extra"], 0.0)]}, "input"),
        ({"inputs": [[0.0] * 64], "records": []}, "malformed"),  # both
        ({}, "malformed"),
        ({"inputs": [[0.0] * 64], "other": 1}, "malformed"),
    ],
)
def test_malformed_or_out_of_range_inputs_are_422(gateway, served_base, body, reason):
    got, answer, _ = call(gateway.url, "/v1/predict", token=served_base.tokens["app"], body=body)
    assert (got, answer["error"]) == (422, reason), answer


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"null", b'{"inputs": [[NaN]]}', b"\xff\xfe"])
def test_bodies_that_are_not_the_request_format_are_422(gateway, served_base, raw):
    assert call(gateway.url, "/v1/predict", token=served_base.tokens["app"], raw=raw)[0] == 422


def test_non_finite_values_are_422(gateway, served_base):
    raw = ('{"inputs": [[' + ",".join(["Infinity"] + ["0"] * 63) + "]]}").encode()
    assert call(gateway.url, "/v1/predict", token=served_base.tokens["app"], raw=raw)[0] == 422


def test_over_the_rate_is_429_with_retry_after(gateway, served_base):
    token = served_base.tokens["burst"]  # 5 rows per minute
    # 5 rows fit the window at most; a 2-row request can straddle it, so count rows
    answers = [call(gateway.url, "/v1/predict", token=token, body={"inputs": ROWS[:2]})
               for _ in range(4)]  # fmt: skip
    statuses = [a[0] for a in answers]
    assert 429 in statuses and statuses.count(200) * 2 <= 5 * 2  # at most two windows
    refused = next(a for a in answers if a[0] == 429)
    assert refused[1]["error"] == "rate"
    assert 1 <= int(refused[2]["retry-after"]) <= 60


def test_a_quota_is_never_exceeded(gateway, served_base):
    token = served_base.tokens["tiny"]  # 6 rows per day
    statuses = [call(gateway.url, "/v1/predict", token=token, body={"inputs": ROWS[:1]})[0]
                for _ in range(9)]  # fmt: skip
    assert statuses.count(200) <= 6 and statuses[-1] == 429


def test_a_batch_larger_than_the_limit_is_422_not_a_retry_forever(gateway, served_base):
    got, body, _ = call(
        gateway.url, "/v1/predict", token=served_base.tokens["burst"], body={"inputs": ROWS}
    )
    assert (got, body["error"]) == (422, "batch")


def test_metrics_need_admin_and_count_requests(gateway, served_base):
    call(gateway.url, "/v1/predict", token=served_base.tokens["app"], body={"inputs": ROWS[:1]})
    call(gateway.url, "/v1/predict", token="wrong", body={"inputs": ROWS[:1]})
    got, text, headers = call(gateway.url, "/metrics", token=served_base.tokens["ops"])
    assert got == 200 and headers["content-type"].startswith("text/plain")
    assert 'aegis_requests_total{client="app",status="200"}' in text
    assert 'aegis_refusals_total{reason="unauthenticated"}' in text
    assert 'aegis_model_info{digest="sha256:' in text and 'version="v1.0.0"' in text
    assert "aegis_request_seconds_bucket" in text
    assert served_base.tokens["app"] not in text


def test_unknown_paths_and_methods_are_4xx(gateway, served_base):
    assert call(gateway.url, "/v1/nothing", token=served_base.tokens["app"])[0] == 404
    assert call(gateway.url, "/v1/predict", token=served_base.tokens["app"])[0] == 405
    # no interactive docs or schema: the API is not advertised
    assert call(gateway.url, "/docs")[0] == 404 and call(gateway.url, "/openapi.json")[0] == 404


def test_the_response_is_json(gateway, served_base):
    got, body, headers = call(
        gateway.url, "/v1/predict", token=served_base.tokens["app"], body={"inputs": ROWS[:1]}
    )
    assert got == 200
    assert headers["content-type"] == "application/json"
    json.dumps(body)


def test_feedback_is_accepted_signed_and_bound_to_the_key_that_sent_it(gateway, served_base):
    from aegis.serve.records import feedback_path

    token = served_base.tokens["app"]
    _, answer, _ = call(gateway.url, "/v1/predict", token=token, body={"inputs": ROWS[:3]})
    labels = {"request": answer["request"], "labels": [0, None, 7]}
    status, body, _ = call(gateway.url, "/v1/feedback", token=token, body=labels)
    assert (status, body) == (202, {"request": answer["request"], "labels": 3})
    lines = feedback_path(served_base.env.ws).read_text().splitlines()
    line = next(json.loads(x) for x in lines if answer["request"] in x)
    assert line["body"] | {"time": None} == {
        "kind": "aegis-serve-feedback/1", "client": served_base.clients["app"], "time": None,
        "request": answer["request"], "labels": [0, None, 7],
    }  # fmt: skip
    assert line["signature"]  # the serving key's (the monitor verifies it)


@pytest.mark.parametrize(
    "body",
    [{"request": "1a-2", "labels": []}, {"request": "1a-2", "labels": [1.5]},
     {"request": "1a-2", "labels": [True]}, {"request": "1a-2", "labels": [-1]},
     {"request": "1a-2", "labels": [2_000_000]}, {"request": "1a-2", "labels": [0] * 257},
     {"request": "../../etc", "labels": [1]}, {"request": 7, "labels": [1]},
     {"request": "1a-2"}, {"request": "1a-2", "labels": [1], "extra": 1}, [1, 2]],
)  # fmt: skip
def test_feedback_that_is_not_labels_of_an_answer_is_422(gateway, served_base, body):
    got, answer, _ = call(gateway.url, "/v1/feedback", token=served_base.tokens["app"], body=body)
    assert (got, answer["error"]) == (422, "malformed"), answer


def test_feedback_needs_a_predict_token(gateway, served_base):
    body = {"request": "1a-2", "labels": [1]}
    assert call(gateway.url, "/v1/feedback", body=body)[0] == 401
    got, answer, _ = call(
        gateway.url, "/v1/feedback", token=served_base.tokens["reader"], body=body
    )
    assert (got, answer["error"]) == (403, "scope")
    assert call(gateway.url, "/v1/feedback", token=served_base.tokens["app"], raw=b"{")[0] == 422
