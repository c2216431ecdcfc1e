"""Training data come only from a validated version, minus its (unreleased) quarantine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import Env, copy_env
from validation_helpers import corrupt, digits_frame, publish_frame, resample

from aegis.config import ModelParams, TrainParams
from aegis.data.ingest import ingest
from aegis.data.quarantine import ROW
from aegis.errors import RefusedError
from aegis.pipeline.layout import Layout
from aegis.pipeline.train import audited_quarantine, load_training_frame
from aegis.pipeline.validate import validate_dataset
from aegis.train.checkpoint import load_checkpoint
from aegis.train.trainer import train_and_save

BAD_ROWS = [3, 500, 1200]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quarantined_base(template_env, tmp_path_factory) -> Path:
    """Digits with BAD_ROWS corrupted, ingested and validated: three rows in quarantine."""
    base = tmp_path_factory.mktemp("train-ws") / "env"
    env = copy_env(template_env.root.parent, base)
    actor, _ = env.ledger().actor(None)
    source = publish_frame(env, corrupt(digits_frame(env), BAD_ROWS), "corrupted")
    ingest(env.ledger(), str(source), name="digits", actor=actor)
    validate_dataset(env.ledger(), "digits", actor=actor)
    return base


@pytest.fixture
def quarantined(quarantined_base, tmp_path) -> Env:
    return copy_env(quarantined_base, tmp_path / "env")


def _refused(env: Env, match: str) -> str:
    with pytest.raises(RefusedError, match=match) as info:
        load_training_frame(env.ledger(), "digits")
    assert info.value.check == "validation" and info.value.exit_code == 1
    return str(info.value)


def test_quarantined_rows_are_left_out(quarantined):
    data = load_training_frame(quarantined.ledger(), "digits")

    result = json.loads((quarantined.root / "validation/digits/result.json").read_text())
    assert data.dataset_digest == result["dataset"] and data.name == "digits"
    assert (data.excluded_rows, data.released_rows) == (3, 0)
    assert len(data.frame) == 1797 - 3 and list(data.frame.index) == list(range(1794))
    assert data.frame["pixel_0_3"].max() <= 16  # the corrupted rows are gone
    expected = digits_frame(quarantined).drop(index=BAD_ROWS).reset_index(drop=True)
    pd.testing.assert_frame_equal(data.frame, expected, check_dtype=False)


def test_released_rows_come_back_for_that_version_only(quarantined, cli):
    root = quarantined.root
    released = cli("--workspace", root, "quarantine", "release", "digits", "--rows", "3,500",
                   "--reason", "checked by hand", "--key", quarantined.operator_key)  # fmt: skip
    assert released.code == 0, released.err

    data = load_training_frame(quarantined.ledger(), "digits")

    assert (data.excluded_rows, data.released_rows) == (1, 2)
    assert len(data.frame) == 1797 - 1
    assert sorted(data.frame["pixel_0_3"].nlargest(2)) == [99.0, 99.0]


def test_a_version_never_validated_is_refused(quarantined):
    (quarantined.root / "validation/digits/result.json").unlink()
    line = _refused(quarantined, "has not passed validation")
    assert "run `aegis validate digits`" in line


def test_validation_of_another_version_is_refused(quarantined, cli):
    newer = publish_frame(quarantined, resample(digits_frame(quarantined)), "newer")
    ingested = cli("--workspace", quarantined.root, "ingest", newer, "--name", "digits")
    assert ingested.code == 0, ingested.err
    line = _refused(quarantined, "has not passed validation")
    old = json.loads((quarantined.root / "validation/digits/result.json").read_text())["dataset"]
    assert old[:19] not in line


def test_an_edited_validation_result_is_refused(quarantined):
    path = quarantined.root / "validation/digits/result.json"
    result = json.loads(path.read_text())
    result["rows"]["quarantined"] = 0  # claims nothing needs leaving out
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    _refused(quarantined, "not the audited result")


def test_a_quarantine_with_rows_removed_is_refused(quarantined):
    path = Layout(quarantined.root).quarantine("digits")
    table = pd.read_parquet(path)
    table[table[ROW] != 500].to_parquet(path, index=False)
    _refused(quarantined, "does not hold the rows the audited validation quarantined")


def test_a_quarantine_with_other_rows_of_the_same_count_is_refused(quarantined):
    # The count alone would pass: the audited result lists the positions themselves.
    path = Layout(quarantined.root).quarantine("digits")
    table = pd.read_parquet(path)
    table[ROW] = [7, 8, 9]
    table.to_parquet(path, index=False)
    _refused(quarantined, "does not hold the rows the audited validation quarantined")


def test_a_result_without_its_quarantined_rows_asks_for_validation_again(quarantined):

    result = json.loads((quarantined.root / "validation/digits/result.json").read_text())
    assert result["quarantined_rows"] == BAD_ROWS
    del result["quarantined_rows"]
    with pytest.raises(RefusedError, match="aegis validate digits` again"):
        audited_quarantine(result, "digits")
    with pytest.raises(RefusedError, match="contradicts itself"):
        audited_quarantine({**result, "quarantined_rows": [3]}, "digits")


def test_an_older_accepted_version_put_back_is_refused(quarantined, cli):
    # v1 (signed, accepted once) restored over v2: the signature still verifies.
    v1_digest = quarantined.ledger().last_accepted("digits").digest
    saved = quarantined.root.parent / "v1-data"
    shutil.copytree(quarantined.root / "data" / "digits", saved)
    newer = publish_frame(quarantined, resample(digits_frame(quarantined)), "newer")
    assert cli("--workspace", quarantined.root, "ingest", newer, "--name", "digits").code == 0
    shutil.rmtree(quarantined.root / "data" / "digits")
    shutil.copytree(saved, quarantined.root / "data" / "digits")
    with pytest.raises(RefusedError, match="not the last version ingest accepted") as info:
        load_training_frame(quarantined.ledger(), "digits")
    assert info.value.check == "replay"
    # re-evaluating a model trained on v1 may name v1 (its own data, checked out again)
    v1 = load_training_frame(quarantined.ledger(), "digits", version=v1_digest)
    assert v1.dataset_digest == v1_digest


def test_train_and_save_records_the_dataset_and_its_quarantine(quarantined, tmp_path):
    data = load_training_frame(quarantined.ledger(), "digits")
    params = TrainParams(
        epochs=1, defense="none", threads=1, model=ModelParams(channels=[4], hidden=[16])
    )
    digest = train_and_save(data, params, out_dir=tmp_path / "model")

    loaded = load_checkpoint(tmp_path / "model")
    assert loaded.digest == digest
    assert loaded.config["dataset"] == data.dataset_digest
    assert loaded.config["quarantine"] == {"excluded": 3, "released": 0}
    assert loaded.config["split"]["rows"] == 1794
    assert loaded.metadata["dataset_name"] == "digits"
