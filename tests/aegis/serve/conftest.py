"""One gateway per session over one served workspace, and one Redis (both stopped by PID).

Tests against ``gateway`` must not change its workspace; tests that change the
registry, the clients or the release files build their own (``served``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import Gateway, Served, copy_served, start_redis
from services import stop


@pytest.fixture(scope="session")
def served_base(served_template: Served, tmp_path_factory) -> Served:
    return copy_served(served_template, tmp_path_factory.mktemp("served") / "env")


@pytest.fixture(scope="session")
def gateway(served_base: Served) -> Iterator[Gateway]:
    gw = Gateway(served_base)
    yield gw
    gw.stop()


@pytest.fixture
def served(served_template: Served, tmp_path: Path) -> Served:
    """A private served workspace (v1 prod, a serving key, the test clients)."""
    return copy_served(served_template, tmp_path / "env")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(proc)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied: copies of one served workspace share its pipeline key
    and client ids, so one test's counters would be another's."""
    import redis

    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server
