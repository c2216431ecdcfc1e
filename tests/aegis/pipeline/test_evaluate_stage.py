"""``aegis evaluate MODEL_DIR --data NAME`` and the evaluate stage on a stored model.

Real components throughout: the signed digits dataset is ingested, validated and a
model trained on it once per module (FAST_PARAMS from the template), then each test
works on its own copy. Re-evaluation runs the real attacks (on FAST_PARAMS budgets);
a checkpoint that is not what Aegis wrote, or one trained on another dataset version,
is refused with one line on stderr and the workspace left exactly as it was.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from helpers import Env, copy_env, snapshot
from validation_helpers import digits_frame, publish_frame, resample, sha256_file

from aegis.data.ingest import ingest
from aegis.evaluate.squeeze import SqueezeDetector
from aegis.pipeline.train import train_stage
from aegis.pipeline.validate import record_validation, validate_dataset
from aegis.train.checkpoint import CONFIG, WEIGHTS, canonical_json, model_digest

# -- workspaces ------------------------------------------------------------------------------


def _ingest_and_validate(env: Env, source: Path) -> str:
    actor, _ = env.ledger().actor(None)
    digest = ingest(env.ledger(), str(source), name="digits", actor=actor).digest
    ledger = env.ledger()
    record_validation(ledger, validate_dataset(ledger, "digits", actor=actor))
    return digest


@pytest.fixture(scope="module")
def trained_base(template_env, tmp_path_factory) -> Path:
    """Digits ingested and validated, and models/digits trained on it (train stage)."""
    env = copy_env(template_env.root.parent, tmp_path_factory.mktemp("eval-trained") / "env")
    _ingest_and_validate(env, env.dataset)
    actor, _ = env.ledger().actor(None)
    train_stage(env.ledger(), "digits", actor=actor)
    return env.root.parent


@pytest.fixture
def trained(trained_base, tmp_path) -> Env:
    return copy_env(trained_base, tmp_path / "env")


# -- helpers ------------------------------------------------------------------------------------


def _model(env: Env) -> Path:
    return env.root / "models" / "digits"


def _refused(cli, env: Env, *args: str, check: str, code: int = 1) -> str:
    """Runs ``aegis ARGS`` in the workspace; asserts the exit code, one stderr line naming
    the check, and an untouched workspace."""
    before = snapshot(env.root)
    result = cli("--workspace", env.root, *args, cwd=env.root)
    assert result.code == code, result.err + result.out
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1, result.err
    assert f"{check}:" in lines[0], lines[0]
    assert "Traceback" not in result.err
    assert snapshot(env.root) == before
    return lines[0]


class _Touch:
    """Pickles as a call of ``Path.touch(path)``: proof of whether anything unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # a new file: never write through a link
    path.write_bytes(data)


# -- re-evaluation --------------------------------------------------------------------------------


def test_evaluate_a_stored_model_again(cli, trained, tmp_path):
    env = trained
    digest = model_digest(_model(env))
    out = tmp_path / "re"

    result = cli(
        "--workspace", env.root, "evaluate", "models/digits", "--data", "digits",
        "--out", out, "--key", env.operator_key, cwd=env.root,
    )  # fmt: skip

    assert result.code == 0, result.err + result.out
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert not (env.root / "reports").exists()  # --out: nothing in the workspace's reports
    metrics = json.loads((out / "metrics.json").read_text())
    validation = json.loads((env.root / "validation" / "digits" / "result.json").read_text())
    assert metrics["model"] == digest and metrics["dataset"] == validation["dataset"]
    assert {"clean_acc", "robust", "flags"} <= set(metrics)
    # the gateway's detector, calibrated on the validation split, measured on the test split
    sizes = json.loads((_model(env) / CONFIG).read_text())["split"]["sizes"]
    detector = metrics["detector"]
    assert detector["calibrated_on"] == "validation"
    assert (detector["calibration_rows"], detector["test_rows"]) == (sizes["val"], sizes["test"])
    assert 0 <= detector["test_fpr"] <= 0.1  # target 4 % (template params)
    fields = {k: detector[k] for k in SqueezeDetector.__dataclass_fields__}
    assert SqueezeDetector.from_json(fields).to_json() == fields
    assert (fields["kind"], fields["bits"], fields["median"]) == ("image", 3, 0)
    assert f"model 'digits' ({digest[:19]})" in result.out
    assert "robust (worst case)" in result.out
    assert f"report: {out / 'report.html'}" in result.out
    page = (out / "report.html").read_text()
    assert "Evaluation of digits" in page
    # the stage renders the evaluation's details: every plot but the DP point is drawn
    assert page.count("data:image/png;base64,") == 4, page[:2000]
    assert "adversarial-input detector: clean test inputs flagged" in page
    for missing in ("no calibration data", "audit not run", "no training history"):
        assert missing not in page
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "evaluate.done"
    assert entry.actor == env.ledger().trust.get("ops").key_id  # the operator's key
    assert entry.subjects["model"] == digest
    assert entry.subjects["metrics"] == sha256_file(out / "metrics.json")

    # --json, to the default place: the same figures (evaluation is seeded)
    as_json = cli(
        "--workspace", env.root, "evaluate", "models/digits", "--data", "digits", "--json",
        cwd=env.root,
    )  # fmt: skip

    assert as_json.code == 0, as_json.err
    printed = json.loads(as_json.out)
    assert printed["model"] is None  # only evaluated here, not trained
    assert printed["metrics"]["model"] == digest
    default = env.root / "reports" / "digits-reevaluated"
    assert printed["metrics"] == json.loads((default / "metrics.json").read_text())
    assert (default / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()
    assert (default / "report.html").is_file()
    assert env.ws.audit().entries()[-1].actor == env.ws.meta()["pipeline_key"]
    assert model_digest(_model(env)) == digest


# -- refusals ------------------------------------------------------------------------------------


def test_a_pickle_in_place_of_the_weights_is_refused(cli, trained, tmp_path):
    marker = tmp_path / "unpickled"
    evil = pickle.dumps({"weight": _Touch(marker)})  # unpickling it would create the marker
    _replace(_model(trained) / WEIGHTS, evil)

    line = _refused(cli, trained, "evaluate", "models/digits", "--data", "digits",
                    check="checkpoint")  # fmt: skip

    assert line.startswith("refused: checkpoint:")
    assert "model.safetensors is not a valid safetensors file" in line
    assert not marker.exists()


def test_a_tampered_config_is_refused(cli, trained):
    path = _model(trained) / CONFIG
    config = json.loads(path.read_text())
    assert config["model"]["hidden"] == [64]
    config["model"]["hidden"] = [32]  # a plausible architecture the weights do not fit
    _replace(path, canonical_json(config))

    line = _refused(cli, trained, "evaluate", "models/digits", "--data", "digits",
                    check="checkpoint")  # fmt: skip

    assert "the architecture needs" in line


def test_a_model_of_another_dataset_version_is_refused(cli, trained):
    env = trained
    model = model_digest(_model(env))
    trained_on = json.loads((_model(env) / CONFIG).read_text())["dataset"]
    v2 = _ingest_and_validate(env, publish_frame(env, resample(digits_frame(env)), "v2"))
    assert v2 != trained_on

    for args in (
        ["evaluate", "models/digits", "--data", "digits"],
        ["stage", "evaluate", "--name", "digits"],
    ):
        line = _refused(cli, env, *args, check="evaluate")
        assert line.startswith("refused: evaluate:")
        assert trained_on[:19] in line and v2[:19] in line
    assert model_digest(_model(env)) == model
    assert env.ws.audit().entries()[-1].action == "validate.passed"


def test_evaluate_for_a_dataset_not_in_the_pipeline_is_a_usage_error(cli, trained):
    _refused(cli, trained, "evaluate", "models/digits", "--data", "breast_cancer",
             check="error", code=2)  # fmt: skip


def test_stage_evaluate_for_a_dataset_not_in_the_pipeline_is_a_usage_error(cli, trained):
    line = _refused(cli, trained, "stage", "evaluate", "--name", "breast_cancer",
                    check="error", code=2)  # fmt: skip
    assert "pipeline.datasets" in line
