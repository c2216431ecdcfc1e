"""The trusted set: an earlier accepted version, measured on and never trained on.

v2 of digits is its first 600 rows (validated: its row index holds them); v3 is all
1797 rows. With ``evaluate.trusted_set: digits@<v2>``, training on v3 leaves out the
600 (by feature hash), evaluation measures on them, and the gates hold them to the
thresholds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import Env, copy_env
from validation_helpers import digits_frame, publish_frame

from aegis import vcs
from aegis.config import override_params
from aegis.data.ingest import ingest
from aegis.errors import RefusedError
from aegis.evaluate.attacks import predict_correct
from aegis.pipeline.evaluate import evaluate_stored
from aegis.pipeline.train import train_stage
from aegis.pipeline.validate import record_validation, validate_dataset
from aegis.train.checkpoint import load_checkpoint
from aegis.train.data import to_tensors


def _deliver(env: Env, frame, out: str) -> str:
    actor, _ = env.ledger().actor(None)
    digest = ingest(env.ledger(), str(publish_frame(env, frame, out)), name="digits",
                    actor=actor).digest  # fmt: skip
    ledger = env.ledger()
    record_validation(ledger, validate_dataset(ledger, "digits", actor=actor))
    return digest


def _trust(env: Env, ref: str | None) -> None:
    override_params(env.root / "params.yaml", {"evaluate": {"trusted_set": ref}})
    vcs.commit_paths(env.root, "test: trusted set", ["params.yaml"])


@pytest.fixture(scope="module")
def two_versions_base(validated_base, tmp_path_factory) -> tuple[Path, str]:
    """v2 (the first 600 rows) and v3 (all rows) delivered, once per module; copied per test."""
    env = copy_env(validated_base, tmp_path_factory.mktemp("two-versions") / "env")
    frame = digits_frame(env)
    small = _deliver(env, frame.iloc[:600].reset_index(drop=True), "v2")
    _deliver(env, frame.sample(frac=1.0, random_state=1).reset_index(drop=True), "v3")
    return env.root.parent, f"digits@{small}"


@pytest.fixture
def two_versions(two_versions_base, tmp_path):
    base, ref = two_versions_base
    return copy_env(base, tmp_path / "env"), ref


def test_the_trusted_rows_never_train_and_are_measured(two_versions):
    env, ref = two_versions
    _trust(env, ref)
    actor, _ = env.ledger().actor(None)

    trained = train_stage(env.ledger(), "digits", actor=actor)
    evaluated = evaluate_stored(env.ledger(), "digits", actor=actor)

    assert trained.rows == 1797 - 600
    trusted = evaluated.metrics["trusted"]
    assert trusted["set"] == ref and trusted["rows"] == 600
    # the figure is the model's accuracy on exactly those 600 rows, preprocessed as trained
    loaded = load_checkpoint(env.root / "models" / "digits")
    rows = digits_frame(env).iloc[:600]
    x, y = to_tensors(rows, np.arange(600), loaded.spec)
    assert trusted["clean_acc"] == round(float(predict_correct(loaded.model, x, y).mean()), 6)
    assert 0 <= trusted["robust_acc"] <= trusted["clean_acc"]


def test_a_model_trained_before_the_trusted_set_was_named_is_not_measured_on_it(two_versions):
    env, ref = two_versions
    actor, _ = env.ledger().actor(None)
    train_stage(env.ledger(), "digits", actor=actor)
    _trust(env, ref)

    with pytest.raises(RefusedError) as info:
        evaluate_stored(env.ledger(), "digits", actor=actor)
    assert info.value.check == "trusted-set" and "train again" in str(info.value)


def test_a_trusted_set_that_was_never_accepted_is_refused(validated):
    _trust(validated, "digits@sha256:" + "0" * 64)
    actor, _ = validated.ledger().actor(None)
    with pytest.raises(RefusedError) as info:
        train_stage(validated.ledger(), "digits", actor=actor)
    assert info.value.check == "trusted-set"


def test_an_altered_row_index_refuses_the_trusted_set(two_versions):
    env, ref = two_versions
    digest = ref.split("@sha256:")[1]
    index = env.root / ".aegis" / "profiles" / "digits" / f"{digest}.rows.parquet"
    frame = digits_frame(env).iloc[:10]
    frame.to_parquet(index, index=False)  # fewer rows: more of them would train
    _trust(env, ref)
    actor, _ = env.ledger().actor(None)
    with pytest.raises(RefusedError) as info:
        train_stage(env.ledger(), "digits", actor=actor)
    assert info.value.check == "trusted-set" and "altered" in str(info.value)
