"""``aegis stage train`` and ``aegis stage evaluate`` in a workspace, end to end.

Real components throughout: the signed digits dataset is ingested and validated once
per module (Great Expectations for real), each test trains on its own copy with the
FAST_PARAMS committed in the template (two epochs of FGSM-RS, one torch thread), and the
CLI runs in-process through its real entry point. A refusal exits with one line on
stderr and leaves the workspace exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import CliResult, Env, copy_env, snapshot, verify_log
from validation_helpers import sha256_file

from aegis import vcs
from aegis.train.checkpoint import CONFIG, METADATA, WEIGHTS, model_digest

# -- workspaces ------------------------------------------------------------------------------


# -- helpers ------------------------------------------------------------------------------------


def _ok(cli, env: Env, *args: str) -> CliResult:
    result = cli("--workspace", env.root, *args)
    assert result.code == 0, result.err + result.out
    return result


def _refused(cli, env: Env, *args: str, check: str, code: int = 1) -> str:
    """Runs ``aegis ARGS``; asserts the exit code, one stderr line naming the check, and
    an untouched workspace."""
    before = snapshot(env.root)
    result = cli("--workspace", env.root, *args)
    assert result.code == code, result.err + result.out
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1, result.err
    assert f"{check}:" in lines[0], lines[0]
    assert "Traceback" not in result.err
    assert snapshot(env.root) == before
    return lines[0]


def _dataset_digest(env: Env) -> str:
    return json.loads((env.root / "validation" / "digits" / "result.json").read_text())["dataset"]


def _set_seed(env: Env, seed: int) -> None:
    path = env.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"]["seed"] = seed
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    vcs.commit_paths(env.root, f"test: train.seed {seed}", ["params.yaml"])


# -- success ------------------------------------------------------------------------------------


def test_stage_train_then_stage_evaluate(cli, validated):
    env = validated
    dataset = _dataset_digest(env)
    pipeline_key = env.ws.meta()["pipeline_key"]

    trained = _ok(cli, env, "stage", "train", "--name", "digits")

    model = env.root / "models" / "digits"
    assert sorted(p.name for p in model.iterdir()) == sorted([WEIGHTS, CONFIG, METADATA])
    digest = model_digest(model)
    assert f"trained digits-model: {digest} -> models/digits" in trained.out
    assert not list((env.root / "models").glob(".*"))  # no scratch directory left behind
    config = json.loads((model / CONFIG).read_text())
    assert config["dataset"] == dataset
    assert config["train"]["defense"] == "fgsm_rs" and config["train"]["epochs"] == 2
    assert config["quarantine"] == {"excluded": 0, "released": 0}
    metadata = json.loads((model / METADATA).read_text())
    assert metadata["dataset_name"] == "digits" and len(metadata["history"]) == 2
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "train.done"
    assert entry.actor == pipeline_key  # unattended: the pipeline key
    assert entry.subjects == {"model": digest, "dataset": dataset}
    assert entry.details["name"] == "digits" and entry.details["model_name"] == "digits-model"
    assert entry.details["defense"] == "fgsm_rs" and entry.details["privacy"] == "off"
    assert entry.details["rows"] == 1797 and entry.details["excluded_rows"] == 0

    evaluated = _ok(cli, env, "stage", "evaluate", "--name", "digits")

    reports = env.root / "reports" / "digits"
    metrics_path, report_path = reports / "metrics.json", reports / "report.html"
    assert metrics_path.is_file() and report_path.is_file()
    assert "reports/digits/metrics.json" in evaluated.out
    metrics = json.loads(metrics_path.read_text())
    assert metrics["model"] == digest and metrics["dataset"] == dataset
    assert metrics["defense"] == "fgsm_rs"
    assert 0.2 < metrics["clean_acc"] <= 1.0  # above chance (0.1) after two FGSM-RS epochs
    worst = metrics["robust"]["worst_case"]
    assert 0.0 <= worst <= metrics["robust"]["pgd"] <= metrics["clean_acc"]
    assert isinstance(metrics["flags"], list)
    html = report_path.read_text()
    assert "Evaluation of digits" in html and "data:image/png;base64," in html
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "evaluate.done"
    assert entry.actor == pipeline_key
    assert entry.subjects == {
        "model": digest,
        "dataset": dataset,
        "metrics": sha256_file(metrics_path),
    }
    assert entry.details == {"name": "digits", "flags": metrics["flags"]}
    assert verify_log(env.ws).entries == len(env.ws.audit().entries())
    assert model_digest(model) == digest  # evaluation changed nothing in the checkpoint


def test_same_data_and_params_give_the_same_digest_and_another_seed_does_not(
    cli, validated_base, tmp_path
):
    """Determinism end to end: two workspaces train byte-identical models."""
    envs = [copy_env(validated_base, tmp_path / f"env{i}") for i in range(3)]
    _set_seed(envs[2], 1)

    for env in envs:
        _ok(cli, env, "stage", "train", "--name", "digits")

    first, second, reseeded = (env.root / "models" / "digits" for env in envs)
    assert model_digest(first) == model_digest(second)
    assert (first / WEIGHTS).read_bytes() == (second / WEIGHTS).read_bytes()
    assert (first / CONFIG).read_bytes() == (second / CONFIG).read_bytes()
    assert model_digest(reseeded) != model_digest(first)
    assert (reseeded / WEIGHTS).read_bytes() != (first / WEIGHTS).read_bytes()


# -- refusals ------------------------------------------------------------------------------------


def test_training_on_a_version_not_validated_is_refused(cli, ingested):
    line = _refused(cli, ingested, "stage", "train", "--name", "digits", check="validation")

    assert line.startswith("refused: validation:")
    assert "has not passed validation" in line
    assert not (ingested.root / "models").exists()
    assert ingested.ws.audit().entries()[-1].action == "ingest.accepted"


def test_a_dataset_not_in_the_pipeline_is_a_usage_error(cli, validated):
    line = _refused(
        cli, validated, "stage", "train", "--name", "breast_cancer", check="error", code=2
    )
    assert "pipeline.datasets" in line


# -- DVC experiments: how DVC users try parameters ---------------------------------------------


@pytest.mark.slow
def test_dvc_exp_run_and_show(validated):
    """``dvc exp run -S`` rewrites params.yaml as YAML 1.2 (``privacy: off`` unquoted) and
    runs the stages; Aegis reads the file as DVC wrote it, and ``dvc exp show`` lists it."""
    import os
    import subprocess
    import sys

    from aegis.config import load_params

    env = validated
    bin_dir = str(Path(sys.executable).parent)
    run_env = {k: v for k, v in os.environ.items() if k != "AEGIS_WORKSPACE"}
    run_env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=env.root, capture_output=True, text=True,
            env=run_env, timeout=600,
        )  # fmt: skip

    ran = dvc("exp", "run", "-S", "train.seed=3")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Running stage 'train@digits'" in ran.stdout
    text = (env.root / "params.yaml").read_text()
    params = load_params(env.root / "params.yaml")
    assert params.train.seed == 3 and params.train.privacy == "off", text
    shown = dvc("exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    experiments = [e for rev in report for e in (rev.get("experiments") or [])]
    assert experiments, shown.stdout[:2000]
    run = experiments[0]["revs"][0]["data"]
    assert run["params"]["params.yaml"]["data"]["train"]["seed"] == 3
    assert "clean_acc" in run["metrics"]["reports/digits/metrics.json"]["data"]
    trained = [e for e in env.ws.audit().entries() if e.action == "train.done"]
    assert trained[-1].details["seed"] == 3
    assert verify_log(env.ws).entries == len(env.ws.audit().entries())
