"""Fuzzed request bodies against the real gateway: always a 2xx or 4xx, never a 5xx."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import call

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=40,
)
NUMBER = st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False)
ROWS = st.lists(st.lists(NUMBER, min_size=60, max_size=66), min_size=1, max_size=4)
BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"inputs": ROWS}),
    st.fixed_dictionaries({"inputs": JSON}),
    st.fixed_dictionaries({"records": st.lists(st.dictionaries(st.text(max_size=10), NUMBER))}),
    st.fixed_dictionaries({"inputs": ROWS, "records": JSON}),
)
FUZZ = settings(
    max_examples=120, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


@FUZZ
@given(body=BODIES)
def test_fuzzed_json_bodies_answer_2xx_or_4xx(gateway, served_base, body):
    raw = json.dumps(body, allow_nan=True).encode()
    status, answer, _ = call(gateway.url, "/v1/predict", token=served_base.tokens["app"], raw=raw)
    assert 200 <= status < 500, (status, answer)
    if status != 200:
        assert set(answer) == {"error", "message"}


@FUZZ
@given(raw=st.binary(max_size=300))
def test_fuzzed_bytes_answer_4xx(gateway, served_base, raw):
    status, _, _ = call(gateway.url, "/v1/predict", token=served_base.tokens["app"], raw=raw)
    assert 400 <= status < 500


@FUZZ
@given(header=st.text(max_size=80).filter(lambda h: "\n" not in h and "\r" not in h))
def test_fuzzed_authorization_headers_answer_401(gateway, header):
    try:
        header.encode("latin-1")
    except UnicodeEncodeError:
        return  # not sendable as an HTTP header
    status, _, _ = call(
        gateway.url, "/v1/predict", raw=b'{"inputs": [[0]]}', headers={"Authorization": header}
    )
    assert status in (400, 401)  # 400: h11 refuses control characters in a header
