"""One gateway per session over one served workspace, and one Redis (both stopped by PID).

Tests against ``gateway`` must not change its workspace; tests that change the
registry, the clients or the release files build their own (``served``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import Gateway, Served, served_workspace, start_redis
from services import stop


@pytest.fixture(scope="session")
def served_base(released_base: Path, tmp_path_factory) -> Served:
    return served_workspace(released_base, tmp_path_factory.mktemp("served") / "env")


@pytest.fixture(scope="session")
def gateway(served_base: Served) -> Iterator[Gateway]:
    gw = Gateway(served_base)
    yield gw
    gw.stop()


@pytest.fixture
def served(released_base: Path, tmp_path: Path) -> Served:
    """A private served workspace (v1 prod, a serving key, the test clients)."""
    return served_workspace(released_base, tmp_path / "env")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(proc)
