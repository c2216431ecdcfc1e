"""Row limits: admitted requests never pass a limit, refused ones count nothing, in both stores."""

from __future__ import annotations

import os
import threading

import pytest

from aegis.serve.clients import Client, parse_limit
from aegis.serve.limiter import MemoryLimiter, RedisLimiter


def _client(rate: str = "1000/day", quota: str = "1000/day", name: str = "c") -> Client:
    return Client(
        name=name, id=f"c-{name}-{os.getpid()}-{id(rate)}", scopes=("predict",),
        rate=parse_limit(rate, what="rate"), quota=parse_limit(quota, what="quota"),
        token_hash="0" * 64, created="", created_by="",
    )  # fmt: skip


def _hammer(limiter, client: Client, *, threads: int = 8, each: int = 50, rows: int = 3) -> int:
    admitted = []

    def run() -> None:
        n = sum(limiter.admit(client, rows).allowed for _ in range(each))
        admitted.append(n)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(admitted) * rows


def test_memory_limits_count_rows_exactly_under_concurrency():
    client = _client(quota="100/day")
    assert _hammer(MemoryLimiter(), client) == 99  # 33 requests of 3 rows; the 34th would pass


def test_a_refused_request_counts_nothing():
    limiter = MemoryLimiter()
    client = _client(quota="10/day")
    assert limiter.admit(client, 8).allowed
    refused = limiter.admit(client, 3)
    assert not refused.allowed and refused.limit == "quota" and refused.retry_after > 0
    assert limiter.admit(client, 2).allowed  # the refused 3 rows were not counted


def test_the_rate_is_checked_before_the_quota():
    limiter = MemoryLimiter()
    client = _client(rate="2/day", quota="1/day")
    assert limiter.admit(client, 3).limit == "rate"


def test_quota_windows_survive_a_restart(tmp_path):
    path = tmp_path / "counters.json"
    client = _client(quota="5/day")
    first = MemoryLimiter(path)
    assert first.admit(client, 5).allowed
    first.close()
    assert not MemoryLimiter(path).admit(client, 1).allowed


@pytest.mark.parametrize("planted", ["junk", "fifo", "symlink"])
def test_a_bad_counters_file_starts_from_zero_and_never_hangs(tmp_path, planted):
    path = tmp_path / "counters.json"
    if planted == "junk":
        path.write_text("{not json")
    elif planted == "fifo":
        os.mkfifo(path)
    else:
        (tmp_path / "elsewhere").write_text("{}")
        path.symlink_to(tmp_path / "elsewhere")
    assert MemoryLimiter(path).admit(_client(), 1).allowed


def test_redis_limits_hold_across_connections(redis_url):
    client = _client(quota="100/day", name="r")
    first, second = RedisLimiter(redis_url), RedisLimiter(redis_url)  # two "workers"
    try:
        admitted = _hammer(first, client, threads=4) + _hammer(second, client, threads=4)
    finally:
        first.close()
        second.close()
    assert admitted == 99


def test_an_unreachable_redis_is_a_configuration_error():
    from services import free_port

    from aegis.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot reach Redis"):
        RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")


def test_limits_that_cannot_be_counted_admit_no_one(tmp_path):
    from serve_helpers import start_redis
    from services import stop

    from aegis.serve.limiter import LimitsUnavailable

    proc, url = start_redis(tmp_path)
    try:
        limiter = RedisLimiter(url, prefix="gone")
        assert limiter.admit(_client(name="g"), 1).allowed
    finally:
        stop(proc)
    with pytest.raises(LimitsUnavailable, match="Redis"):
        limiter.admit(_client(name="g"), 1)
    limiter.close()


def test_a_failed_save_is_tried_again(tmp_path):
    path = tmp_path / "counters.json"
    limiter = MemoryLimiter(path)
    client = _client(quota="5/day")
    assert limiter.admit(client, 2).allowed
    path.mkdir()  # the rename onto it fails
    with pytest.raises(OSError):
        limiter.save()
    path.rmdir()
    limiter.save()  # still dirty: written now
    assert not MemoryLimiter(path).admit(client, 4).allowed
