"""Architectures: built from a JSON-able config alone, seeded, Opacus-compatible."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from aegis.config import ModelParams, TrainParams
from aegis.errors import ConfigError
from aegis.train.data import prepare
from aegis.train.models import build_model, model_config, model_from_config


@pytest.fixture(scope="module")
def image_spec(digits):
    return prepare(digits, TrainParams()).spec


@pytest.fixture(scope="module")
def table_spec(cancer):
    return prepare(cancer, TrainParams()).spec


def test_auto_is_a_cnn_for_images(image_spec):
    params = ModelParams(channels=[16, 32], hidden=[64])
    config = model_config(image_spec, params)
    model = build_model(image_spec, params, seed=0)

    assert config == {
        "kind": "cnn",
        "input_shape": [1, 8, 8],
        "classes": 10,
        "channels": [16, 32],
        "hidden": [64],
        "activation": "relu",
        "norm": "none",
    }
    names = [name for name, _ in model.named_children()]
    assert names == ["conv0", "act0", "conv1", "act1", "pool", "flatten", "fc0", "fc_act0", "out"]
    assert model.conv0.kernel_size == (3, 3) and model.conv0.padding == (1, 1)
    assert model.fc0.in_features == 32 * 4 * 4
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_group_norm_and_tanh(image_spec):
    model = build_model(
        image_spec, ModelParams(channels=[4, 12, 16], activation="tanh", norm="group"), seed=0
    )
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(4, 4), (4, 12), (8, 16)]
    assert any(isinstance(m, nn.Tanh) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_auto_is_an_mlp_for_tables_and_an_mlp_may_take_images(table_spec, image_spec):
    model = build_model(table_spec, ModelParams(hidden=[32, 16]), seed=0)
    assert model(torch.randn(3, 30)).shape == (3, 2)
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    flat = build_model(image_spec, ModelParams(kind="mlp"), seed=0)
    assert flat(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="cnn needs image data"):
        model_config(table_spec, ModelParams(kind="cnn"))


def test_small_images_skip_pooling(image_spec):
    config = {**model_config(image_spec, ModelParams()), "input_shape": [1, 3, 3]}
    model = model_from_config(config)
    assert not hasattr(model, "pool") and model(torch.rand(2, 1, 3, 3)).shape == (2, 10)


def test_seed_fixes_the_initial_weights_without_touching_the_global_rng(image_spec):
    state = torch.get_rng_state()
    a = build_model(image_spec, ModelParams(), seed=1).state_dict()
    b = build_model(image_spec, ModelParams(), seed=1).state_dict()
    c = build_model(image_spec, ModelParams(), seed=2).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv0.weight"], c["conv0.weight"])


def test_config_round_trips_through_json(image_spec):
    config = model_config(image_spec, ModelParams(norm="group"))
    model = model_from_config(json.loads(json.dumps(config)))
    assert set(model.state_dict()) == set(
        build_model(image_spec, ModelParams(norm="group"), seed=0).state_dict()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "resnet"},
        {"channels": [10**6]},
        {"channels": []},
        {"hidden": ["64"]},
        {"activation": "gelu"},
        {"classes": 1},
        {"input_shape": [1, 8]},
        {"input_shape": [1, 10**5, 10**5]},
        {"extra": True},
    ],
)
def test_malformed_configs_are_rejected(image_spec, change):
    with pytest.raises(ValueError):
        model_from_config({**model_config(image_spec, ModelParams()), **change})
