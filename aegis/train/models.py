"""The two architectures: a small CNN for square images, an MLP for tabular data.

A model is rebuilt from a JSON-able config alone (``config.json["model"]``),
so a checkpoint never needs code or pickles to describe its architecture.
No BatchNorm anywhere: Opacus cannot compute per-sample gradients through it
(GroupNorm is the DP-friendly option).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from aegis.config import ModelParams
from aegis.errors import ConfigError
from aegis.train.data import DataSpec

_KEYS = {"kind", "input_shape", "classes", "channels", "hidden", "activation", "norm"}
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
_MAX_INPUT = 2**24  # values per input: a bound on what a config may make us allocate


def model_config(spec: DataSpec, params: ModelParams) -> dict[str, Any]:
    """The architecture of ``params`` for data shaped like ``spec``, as plain JSON.

    Raises:
        ConfigError: ``train.model.kind`` is ``cnn`` but the data are not images.
    """
    kind = params.kind
    if kind == "auto":
        kind = "cnn" if spec.kind == "image" else "mlp"
    if kind == "cnn" and spec.kind != "image":
        raise ConfigError("train.model.kind: cnn needs image data (pixel_<r>_<c> columns)")
    return {
        "kind": kind,
        "input_shape": list(spec.input_shape),
        "classes": spec.classes,
        "channels": list(params.channels) if kind == "cnn" else [],
        "hidden": list(params.hidden),
        "activation": params.activation,
        "norm": params.norm if kind == "cnn" else "none",  # GroupNorm follows convolutions only
    }


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Builds the (freshly initialized) module that ``config`` describes.

    Raises:
        ValueError: The config is malformed (unknown keys, wrong types, sizes out of range).
    """
    _check_config(config)
    act = _ACTIVATIONS[config["activation"]]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    shape = config["input_shape"]
    if config["kind"] == "cnn":
        c, h, w = shape
        for i, ch in enumerate(config["channels"]):
            layers[f"conv{i}"] = nn.Conv2d(c, ch, kernel_size=3, padding=1)
            if config["norm"] == "group":
                # gcd(8, ch) is min(8, ch) for the usual widths and always divides ch
                layers[f"norm{i}"] = nn.GroupNorm(math.gcd(8, ch), ch)
            layers[f"act{i}"] = act()
            c = ch
        if h >= 4 and w >= 4:
            layers["pool"] = nn.MaxPool2d(2)
            h, w = h // 2, w // 2
        width = c * h * w
    else:
        width = math.prod(shape)
    layers["flatten"] = nn.Flatten()
    for j, size in enumerate(config["hidden"]):
        layers[f"fc{j}"] = nn.Linear(width, size)
        layers[f"fc_act{j}"] = act()
        width = size
    layers["out"] = nn.Linear(width, config["classes"])
    return nn.Sequential(layers)


def build_model(spec: DataSpec, params: ModelParams, *, seed: int) -> nn.Module:
    """A new model for ``spec``, its initial weights fixed by ``seed``.

    The global RNG state is left as it was.
    """
    config = model_config(spec, params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_from_config(config)


def _check_config(config: Any) -> None:
    def sizes(values: Any, top: int) -> bool:
        return isinstance(values, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top for v in values
        )

    if not isinstance(config, dict) or set(config) != _KEYS:
        raise ValueError(f"model config must have exactly the keys {sorted(_KEYS)}")
    kind, shape = config["kind"], config["input_shape"]
    ok = (
        kind in ("cnn", "mlp")
        and sizes(shape, _MAX_INPUT)
        and len(shape) in ((3,) if kind == "cnn" else (1, 3))
        and math.prod(shape) <= _MAX_INPUT
        and sizes([config["classes"]], 100_000)
        and config["classes"] >= 2
        and sizes(config["channels"], 512)
        and (len(config["channels"]) >= 1 if kind == "cnn" else config["channels"] == [])
        and sizes(config["hidden"], 4096)
        and config["activation"] in _ACTIVATIONS
        and config["norm"] in ("none", "group")
    )
    if not ok:
        raise ValueError("model config has a field of the wrong type or out of range")
