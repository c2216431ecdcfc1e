"""Data spec, stratified split and tensors: from training statistics only, deterministic."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from aegis.config import TrainParams
from aegis.errors import ConfigError, RefusedError
from aegis.train.data import (
    DataSpec,
    infer_spec,
    input_domain,
    positions_digest,
    prepare,
    rebuild_split,
    split_rows,
    to_tensors,
)


def _split(frame, seed=0, test=0.2, val=0.1):
    return split_rows(
        len(frame), labels=frame["label"].to_numpy(), seed=seed, test_fraction=test,
        val_fraction=val,
    )  # fmt: skip


def test_split_is_a_stratified_partition(digits):
    split = _split(digits)

    rows = np.concatenate([split.train, split.val, split.test])
    assert sorted(rows) == list(range(len(digits)))  # disjoint and complete
    assert len(split.test) == pytest.approx(0.2 * len(digits), abs=10)
    assert len(split.val) == pytest.approx(0.1 * len(digits), abs=10)
    overall = np.bincount(digits["label"]) / len(digits)
    for part in (split.train, split.val, split.test):
        share = np.bincount(digits["label"].to_numpy()[part], minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.02
    assert all(p.dtype == np.int64 for p in (split.train, split.val, split.test))


def test_split_is_fixed_by_the_seed_and_named_by_its_test_digest(digits):
    a, b, other = _split(digits), _split(digits), _split(digits, seed=1)

    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert a.test_digest == b.test_digest == positions_digest(a.test)
    assert a.test_digest.startswith("sha256:") and len(a.test_digest) == 71
    assert other.test_digest != a.test_digest
    # the digest of known positions never changes (evaluations rely on it)
    assert positions_digest(np.array([0, 1, 2])) == (
        "sha256:" + hashlib.sha256(np.array([0, 1, 2], "<i8").tobytes()).hexdigest()
    )
    assert a.to_json() == {
        "seed": 0,
        "test_fraction": 0.2,
        "val_fraction": 0.1,
        "test_digest": a.test_digest,
        "rows": len(digits),
        "sizes": {"train": len(a.train), "val": len(a.val), "test": len(a.test)},
    }


def test_recorded_split_is_rebuilt_only_from_the_same_rows(digits):
    recorded = _split(digits, seed=3).to_json()
    rebuilt = rebuild_split(digits, recorded)
    assert np.array_equal(rebuilt.test, _split(digits, seed=3).test)
    with pytest.raises(RefusedError, match="recorded test split") as info:
        rebuild_split(digits.drop(index=[5]).reset_index(drop=True), recorded)
    assert info.value.check == "split"
    with pytest.raises(RefusedError):
        rebuild_split(digits.sample(frac=1, random_state=0).reset_index(drop=True), recorded)


def test_split_without_validation_rows_and_too_few_rows(digits):
    split = _split(digits, val=0.0)
    assert len(split.val) == 0 and len(split.train) + len(split.test) == len(digits)
    with pytest.raises(ConfigError, match="too few"):
        split_rows(3, labels=np.array([0, 1, 2]), seed=0, test_fraction=0.2, val_fraction=0.0)


def test_digits_are_8x8_images_scaled_by_the_training_maximum(digits):
    split = _split(digits)
    spec = infer_spec(digits.sample(frac=1, axis=1, random_state=0), split.train)  # column order

    assert spec.kind == "image" and spec.image_shape == (1, 8, 8) and spec.classes == 10
    assert spec.feature_columns == tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8))
    assert spec.scale == 16.0 and spec.mean is None and spec.std is None
    x, y = to_tensors(digits, split.test, spec)
    assert x.shape == (len(split.test), 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == digits["label"].iloc[split.test].tolist()
    assert x.min() >= 0.0 and x.max() <= 1.0
    row = split.test[0]
    assert x[0, 0, 2, 5] == pytest.approx(digits.loc[row, "pixel_2_5"] / 16.0)


def test_not_a_full_square_grid_is_tabular(digits):
    split = _split(digits)
    spec = infer_spec(digits.drop(columns=["pixel_7_7"]), split.train)
    assert spec.kind == "tabular" and spec.image_shape is None


def test_tabular_statistics_come_from_the_training_split_only(cancer):
    split = _split(cancer)
    spec = infer_spec(cancer, split.train)

    features = [c for c in cancer.columns if c != "label"]
    assert spec.kind == "tabular" and spec.classes == 2 and spec.feature_columns == tuple(features)
    train = cancer.iloc[split.train][features].to_numpy()
    assert np.allclose(spec.mean, train.mean(axis=0)) and np.allclose(spec.std, train.std(axis=0))
    assert not np.allclose(spec.mean, cancer[features].to_numpy().mean(axis=0), rtol=1e-6)
    x, _ = to_tensors(cancer, split.train, spec)
    assert x.shape == (len(split.train), 30)
    assert np.allclose(x.mean(dim=0).numpy(), 0, atol=1e-4)
    assert np.allclose(x.std(dim=0, unbiased=False).numpy(), 1, atol=1e-3)


def test_constant_feature_gets_the_std_floor(cancer):
    frame = cancer.assign(constant=1.0)
    spec = infer_spec(frame, _split(frame).train)
    assert spec.std[spec.feature_columns.index("constant")] == 1e-8


def test_labels_must_be_integer_class_ids(cancer):
    with pytest.raises(ConfigError, match="integer class ids"):
        infer_spec(cancer.assign(label=cancer["label"].astype(float)), np.arange(10))
    with pytest.raises(ConfigError, match="no 'label'"):
        infer_spec(cancer.drop(columns=["label"]), np.arange(10))
    with pytest.raises(ConfigError, match="numeric"):
        infer_spec(cancer.assign(kind="x"), np.arange(10))


@pytest.mark.parametrize("frame_name", ["digits", "cancer"])
def test_spec_json_round_trip(frame_name, request):
    frame = request.getfixturevalue(frame_name)
    spec = prepare(frame, TrainParams()).spec
    data = spec.to_json()
    assert DataSpec.from_json(json.loads(json.dumps(data))) == spec
    with pytest.raises(ValueError):
        DataSpec.from_json({**data, "extra": 1})
    with pytest.raises(ValueError):
        DataSpec.from_json({**data, "classes": "10"})


def test_input_domain(digits, cancer):
    image = prepare(digits, TrainParams()).spec
    table = prepare(cancer, TrainParams()).spec
    assert input_domain(image, TrainParams()) == (0.0, 1.0)
    assert input_domain(table, TrainParams()) is None
    assert input_domain(image, TrainParams(input_domain="none")) is None
    assert input_domain(table, TrainParams(input_domain=[-3.0, 3.0])) == (-3.0, 3.0)
    with pytest.raises(ConfigError, match="input_domain"):
        input_domain(table, TrainParams(input_domain=[1.0, 1.0]))
