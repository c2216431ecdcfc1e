"""The demo recreates only its own workspaces (running the demo itself is `make demo`)."""

from __future__ import annotations

import pytest

from aegis.demo import _fresh_directory
from aegis.errors import UsageError


def test_recreates_a_demo_workspace(tmp_path):
    ws = tmp_path / "demo-ws"
    (ws / ".aegis" / "demo").mkdir(parents=True)
    (ws / "params.yaml").write_text("x")
    assert _fresh_directory(ws) == ws.resolve()
    assert not ws.exists()


def test_accepts_a_missing_or_empty_directory(tmp_path):
    assert _fresh_directory(tmp_path / "new") == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    assert _fresh_directory(tmp_path / "empty").is_dir()


@pytest.mark.parametrize("marker", [".aegis/workspace.json", "data.csv"])
def test_refuses_a_real_workspace_or_other_files(tmp_path, marker):
    target = tmp_path / "ws"
    (target / marker).parent.mkdir(parents=True, exist_ok=True)
    (target / marker).write_text("keep me")
    with pytest.raises(UsageError, match="not a demo workspace"):
        _fresh_directory(target)
    assert (target / marker).read_text() == "keep me"
