"""``aegis drill``: the playbook end to end in a scratch workspace, as a real process.

One run: two real releases and promotions, a real gateway (``aegis serve``), the monitor
and its rollback. It runs inside a workspace whose monitor policy it copies and whose
files it must leave exactly as they were.
"""

from __future__ import annotations

import json

import pytest
from helpers import snapshot
from registry_helpers import aegis

from aegis.config import override_params


@pytest.mark.slow
def test_the_drill_detects_the_degraded_model_and_rolls_back_in_its_own_workspace(env, tmp_path):
    override_params(env.root / "params.yaml", {"monitor": {"single_client_share": 0.9}})
    before = snapshot(env.root)
    scratch = tmp_path / "drill"
    result = aegis(env.root, "drill", "--dir", scratch, "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["workspace"] == str(scratch.resolve() / "workspace")
    assert out["rolled_back_to"] == "digits-model@v1.0.0" and out["action"] == "rollback"
    assert "feedback_accuracy" in out["signals"]
    assert 0 < out["time_to_detect_s"] <= out["time_to_contain_s"]
    assert "screens" in out["degradation"] and "OFF" in result.stderr  # said so
    assert snapshot(env.root) == before  # the current workspace: untouched
    drilled = scratch / "workspace"
    listed = json.loads(aegis(drilled, "incidents", "list", "--json").stdout)
    assert [i["id"] for i in listed] == [out["incident"]]
    assert listed[0]["containment"]["served"] == "gateway"  # contained when it served v1
    params = (drilled / "params.yaml").read_text()
    assert "single_client_share: 0.9" in params  # the policy rehearsed is the workspace's
    status = json.loads(aegis(drilled, "status", "--json").stdout)
    assert status["models"][0]["prod"] == "v1.0.0"
    assert status["models"][0]["suspect"] == ["v2.0.0"]


def test_the_drill_refuses_a_folder_that_is_not_empty(cli, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine\n")
    result = cli("drill", "--dir", str(taken))
    assert result.code == 2 and "empty or new folder" in result.err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    link = tmp_path / "link"
    link.symlink_to(taken)
    result = cli("drill", "--dir", str(link))
    assert result.code == 2 and "empty or new folder" in result.err
