"""A private served workspace per test, with a monitor key (the pass changes its state)."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import Served, copy_served


@pytest.fixture
def served(served_template: Served, tmp_path: Path) -> Served:
    return copy_served(served_template, tmp_path / "env")


@pytest.fixture
def monitor_key(served: Served) -> Path:
    from aegis.trust_ops import new_key

    out = served.root.parent / "keys" / "monitor.pem"
    new_key(served.env.ws, role="monitor", name="watchman", owner="sre", out=out,
            admin_key=served.env.admin_key)  # fmt: skip
    return out
