"""The demo recreates only its own folders (running the demo itself is `make demo`)."""

from __future__ import annotations

import os

import pytest

from aegis.demo import MARKER, _fresh_directory
from aegis.errors import UsageError


@pytest.mark.parametrize("made_by", [MARKER, ".aegis/demo"])
def test_recreates_a_demo_folder(tmp_path, made_by):
    base = tmp_path / "demo"
    (base / made_by).parent.mkdir(parents=True, exist_ok=True)
    if made_by == MARKER:
        (base / MARKER).write_text("x")
    else:
        (base / made_by).mkdir()  # a demo workspace of an earlier version
    (base / "workspace" / "params.yaml").parent.mkdir(parents=True)
    (base / "workspace" / "params.yaml").write_text("x")
    assert _fresh_directory(base) == base.resolve()
    assert [p.name for p in base.iterdir()] == [MARKER]


def test_accepts_a_missing_or_empty_directory(tmp_path):
    assert _fresh_directory(tmp_path / "new") == (tmp_path / "new").resolve()
    assert (tmp_path / "new" / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    assert _fresh_directory(tmp_path / "empty").is_dir()


@pytest.mark.parametrize("marker", [".aegis/workspace.json", "data.csv"])
def test_refuses_a_real_workspace_or_other_files(tmp_path, marker):
    target = tmp_path / "ws"
    (target / marker).parent.mkdir(parents=True, exist_ok=True)
    (target / marker).write_text("keep me")
    with pytest.raises(UsageError, match="not a demo folder"):
        _fresh_directory(target)
    assert (target / marker).read_text() == "keep me"
    assert not (target / MARKER).exists()


def test_the_theft_story_needs_a_finished_demo_folder_and_runs_once(tmp_path, cli):
    from aegis.demo_theft import run_theft_story

    with pytest.raises(UsageError, match="not a finished demo folder"):
        run_theft_story(tmp_path)  # no demo here
    (tmp_path / MARKER).write_text("x")
    (tmp_path / "workspace" / ".aegis").mkdir(parents=True)
    (tmp_path / "people").mkdir()
    (tmp_path / "people" / "theft-story").write_text("told")
    with pytest.raises(UsageError, match="was told here"):
        run_theft_story(tmp_path)
    result = cli("demo", str(tmp_path), "--story", "heist")
    assert result.code == 2 and "--story 'heist': main or theft" in result.err


def test_the_first_flow_names_a_dead_server_and_leaves_no_wait_behind(tmp_path, monkeypatch):
    """``first_flow`` (both stories' first ``aegis run``): a failing command is reported as
    itself while the server lives, as the server's failure once it has exited."""
    from aegis.demo import DemoFailed, _prefect_server

    monkeypatch.delenv("AEGIS_PREFECT_WAIT_S", raising=False)
    missing = tmp_path / "no-workspace"
    with _prefect_server(tmp_path / "prefect") as server:
        with pytest.raises(DemoFailed, match="exited 2, expected 0"):
            server.first_flow(missing, "status")  # the server is still starting: alive
        assert os.environ["PREFECT_API_URL"] == server.api
        assert "AEGIS_PREFECT_WAIT_S" not in os.environ  # later commands do not wait
        server.stop()
        with pytest.raises(DemoFailed, match=r"the Prefect server did not start; see .*server"):
            server.first_flow(missing, "status")
    assert "AEGIS_PREFECT_WAIT_S" not in os.environ
