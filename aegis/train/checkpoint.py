"""Checkpoints: safetensors weights plus JSON, and nothing that can run code.

A checkpoint is a directory holding

- ``model.safetensors``: the weights only (plain tensors, no pickle);
- ``config.json``: everything that defines the model (architecture, data
  spec and preprocessing statistics, split, training params, privacy
  accounting, dataset digest), as sorted-key JSON;
- ``metadata.json``: what is true of one run but not reproducible (times,
  host, versions, per-epoch history).

The model digest covers the weights and the config, not the metadata, so the
same inputs give the same digest on any run. Loading checks every byte it
trusts: a file that is not strict safetensors, or whose tensors do not match
the architecture the config describes, is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from aegis.errors import RefusedError
from aegis.fileutil import atomic_write, read_regular
from aegis.train.data import DataSpec
from aegis.train.digest import CONFIG, METADATA, MODEL_LIMIT, WEIGHTS, model_digest
from aegis.train.digest import digest_of as _digest
from aegis.train.models import model_from_config

__all__ = [
    "CONFIG", "METADATA", "WEIGHTS", "LoadedModel", "checkpoint_of_bytes", "load_checkpoint",
    "model_digest",
]  # fmt: skip
__all__ += ["save_checkpoint", "weights_of"]

FORMAT = "aegis-model/1"
CONFIG_KEYS = {"format", "model", "data", "split", "train", "privacy", "dataset"}


@dataclass
class LoadedModel:
    """A verified checkpoint: the model in eval mode and what describes it."""

    model: nn.Module
    config: dict[str, Any]
    spec: DataSpec
    digest: str
    metadata: dict[str, Any] = field(default_factory=dict)


def canonical_json(data: Any) -> bytes:
    """Sorted keys, fixed indentation, no NaN: the same data give the same bytes."""
    return json.dumps(data, sort_keys=True, indent=1, allow_nan=False).encode() + b"\n"


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as contiguous CPU tensors, Opacus's ``_module.`` prefixes removed."""
    out = {}
    for name, tensor in model.state_dict().items():
        while name.startswith("_module."):
            name = name.removeprefix("_module.")
        out[name] = tensor.detach().to("cpu").contiguous().clone()
    return out


def save_checkpoint(
    directory: Path, *, model: nn.Module, config: dict[str, Any], metadata: dict[str, Any]
) -> str:
    """Writes ``model`` as a checkpoint directory and returns its model digest.

    Args:
        directory: Created if missing; the three files in it are replaced.
        model: The trained model (an Opacus wrapper is fine).
        config: The ``config.json`` content (``format`` is set here).
        metadata: The ``metadata.json`` content (not part of the digest).

    Raises:
        ValueError: The weights do not match ``config["model"]``.
    """
    config = {**config, "format": FORMAT}
    tensors = weights_of(model)
    _match_architecture(tensors, config["model"])  # a bad save fails now, not at load
    weights = save_safetensors(tensors)
    config_bytes = canonical_json(config)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS, weights)
    atomic_write(directory / CONFIG, config_bytes)
    atomic_write(directory / METADATA, json.dumps(metadata, indent=1, sort_keys=True).encode())
    return _digest(weights, config_bytes)


def load_checkpoint(directory: Path) -> LoadedModel:
    """Loads and verifies a checkpoint; never unpickles anything.

    Raises:
        RefusedError: ``checkpoint``: a file is missing, the weights are not a
            valid safetensors file or do not match the configured architecture,
            or a JSON file is invalid or of an unknown format.
    """
    directory = Path(directory)
    raw = {}
    for name in (WEIGHTS, CONFIG, METADATA):
        try:
            raw[name] = read_regular(directory / name, limit=MODEL_LIMIT, what=name)
        except (OSError, RefusedError):
            raise RefusedError(
                "checkpoint", f"{directory}: {name} is missing, unreadable or not a regular file"
            ) from None
    return checkpoint_of_bytes(raw, where=str(directory))


def checkpoint_of_bytes(raw: Mapping[str, bytes], *, where: str) -> LoadedModel:
    """Builds a checkpoint from its files' bytes (``WEIGHTS``, ``CONFIG``, ``METADATA``).

    The same checks as :func:`load_checkpoint`, for a checkpoint held in memory (a
    decrypted sealed export); ``where`` names it in messages.

    Raises:
        RefusedError: ``checkpoint``, as :func:`load_checkpoint`.
    """

    def refuse(why: str) -> RefusedError:
        return RefusedError("checkpoint", f"{where}: {why}")

    missing = [name for name in (WEIGHTS, CONFIG, METADATA) if name not in raw]
    if missing:
        raise refuse(f"{missing[0]} is missing")
    try:
        config = _strict_json(raw[CONFIG])
        metadata = _strict_json(raw[METADATA])
    except RecursionError:
        raise refuse("not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise refuse(f"not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else None
        raise refuse(f"{CONFIG}: unknown format {fmt!r} (expected {FORMAT})")
    if not set(config) >= CONFIG_KEYS or not isinstance(metadata, dict):
        raise refuse(f"{CONFIG} lacks {sorted(CONFIG_KEYS - set(config))}")
    try:
        spec = DataSpec.from_json(config["data"])
        arch = config["model"]
        if arch["input_shape"] != list(spec.input_shape) or arch["classes"] != spec.classes:
            raise ValueError("the model config does not fit the data spec")
    except (ValueError, TypeError, KeyError) as exc:
        raise refuse(f"{CONFIG}: {exc}") from None
    try:
        tensors = load_safetensors(raw[WEIGHTS])
    except Exception as exc:  # safetensors raises its own error type on any malformed input
        raise refuse(f"{WEIGHTS} is not a valid safetensors file ({exc})") from None
    try:
        model = _match_architecture(tensors, arch)
    except ValueError as exc:
        raise refuse(f"{WEIGHTS}: {exc}") from None
    model.eval()
    return LoadedModel(model, config, spec, _digest(raw[WEIGHTS], raw[CONFIG]), metadata)


def _match_architecture(tensors: dict[str, torch.Tensor], arch: dict[str, Any]) -> nn.Module:
    """The configured model with ``tensors`` loaded, if names, shapes and dtypes match exactly."""
    model = model_from_config(arch)
    expected = model.state_dict()
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(
            f"tensors do not match the architecture (missing {missing}, extra {extra})"
        )
    for name, want in expected.items():  # in layer order: the first mismatch is the earliest
        tensor = tensors[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise ValueError(
                f"tensor {name} is {tensor.dtype} {list(tensor.shape)}, "
                f"the architecture needs {want.dtype} {list(want.shape)}"
            )
    model.load_state_dict(tensors, strict=True)
    return model


def _strict_json(data: bytes) -> Any:
    """JSON without duplicate keys or NaN/Infinity (ambiguous content is refused)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(items)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
