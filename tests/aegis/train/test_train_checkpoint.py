"""Checkpoints: safetensors + JSON round trip; anything else (pickles, tampering) is refused."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from aegis.config import ModelParams, TrainParams
from aegis.errors import RefusedError
from aegis.train.checkpoint import (
    CONFIG,
    FORMAT,
    METADATA,
    WEIGHTS,
    load_checkpoint,
    model_digest,
    save_checkpoint,
)
from aegis.train.data import to_tensors
from aegis.train.models import model_config
from aegis.train.trainer import train_and_save, train_model

TINY = ModelParams(channels=[4], hidden=[16])


@pytest.fixture(scope="module")
def saved(digits, as_data, small_params, tmp_path_factory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    digest = train_and_save(as_data(digits, 300), small_params(model=TINY), out_dir=directory)
    return directory, digest


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved[0], tmp_path / "model"))


def _refused(directory: Path, match: str) -> str:
    with pytest.raises(RefusedError, match=match) as info:
        load_checkpoint(directory)
    assert info.value.check == "checkpoint" and info.value.exit_code == 1
    return str(info.value)


def test_round_trip_gives_identical_predictions(digits, as_data, small_params, tmp_path):
    data = as_data(digits, 300)
    result = train_model(data, small_params(model=TINY))
    config = {
        "model": model_config(result.spec, TINY),
        "data": result.spec.to_json(),
        "split": result.split.to_json(),
        "train": {},
        "privacy": None,
        "dataset": "d",
    }
    digest = save_checkpoint(tmp_path / "m", model=result.model, config=config, metadata={"a": 1})

    loaded = load_checkpoint(tmp_path / "m")

    assert digest == loaded.digest == model_digest(tmp_path / "m")
    assert not loaded.model.training and loaded.spec == result.spec
    assert loaded.config == {**config, "format": FORMAT} and loaded.metadata == {"a": 1}
    x, _ = to_tensors(data.frame, result.split.test, result.spec)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model(x))


def test_saved_files_and_what_the_digest_covers(saved):
    directory, digest = saved
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG, METADATA, WEIGHTS]
    raw = (directory / CONFIG).read_bytes()
    config = json.loads(raw)
    assert raw == json.dumps(config, sort_keys=True, indent=1).encode() + b"\n"  # canonical
    assert set(config) >= {"format", "model", "data", "split", "train", "privacy", "dataset"}
    assert config["format"] == FORMAT and config["privacy"] is None
    assert config["dataset"] == "sha256:" + "0" * 64 and config["train"]["seed"] == 0
    assert config["split"]["test_digest"].startswith("sha256:")
    assert TrainParams.model_validate(config["train"]).model.channels == [4]  # params round trip
    metadata = json.loads((directory / METADATA).read_text())
    assert {"started", "host", "python", "versions", "threads", "history"} <= set(metadata)
    assert len(metadata["history"]) == 1 and "seconds" in metadata["history"][0]
    assert digest == model_digest(directory)


def test_metadata_is_outside_the_digest_but_weights_and_config_are_inside(copy, saved):
    (copy / METADATA).write_text('{"host": "elsewhere"}')
    assert load_checkpoint(copy).digest == saved[1]
    config = json.loads((copy / CONFIG).read_text())
    config["dataset"] = "sha256:" + "1" * 64
    (copy / CONFIG).write_text(json.dumps(config))
    assert load_checkpoint(copy).digest != saved[1]


@pytest.mark.parametrize("name", [WEIGHTS, CONFIG, METADATA])
def test_missing_file_is_refused(copy, name):
    (copy / name).unlink()
    _refused(copy, f"{name} is missing")


def test_a_pickle_renamed_to_safetensors_is_refused_and_never_run(copy, tmp_path):
    marker = tmp_path / "pwned"
    # a protocol-0 pickle that would run a shell command if anything unpickled it
    (copy / WEIGHTS).write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    _refused(copy, "not a valid safetensors file")
    assert not marker.exists()


@pytest.mark.parametrize("zipfile", [True, False])
def test_a_torch_save_file_renamed_to_safetensors_is_refused(copy, zipfile):
    state = {"conv0.weight": torch.zeros(4, 1, 3, 3)}
    torch.save(state, copy / WEIGHTS, _use_new_zipfile_serialization=zipfile)  # writing only
    _refused(copy, "not a valid safetensors file")


def test_a_truncated_weights_file_is_refused(copy):
    data = (copy / WEIGHTS).read_bytes()
    for size in (len(data) - 4, len(data) // 2, 12, 3, 0):
        (copy / WEIGHTS).write_bytes(data[:size])
        _refused(copy, "not a valid safetensors file")


def _rewrite_header(path: Path, edit) -> None:
    """Applies ``edit`` to the JSON header and fixes the header length."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def test_a_tampered_header_is_refused(copy):
    original = (copy / WEIGHTS).read_bytes()

    def swap(header):  # same number of elements: a valid file of the wrong shape
        header["conv0.weight"]["shape"] = [1, 4, 3, 3]

    _rewrite_header(copy / WEIGHTS, swap)
    _refused(copy, r"conv0.weight is torch.float32 \[1, 4, 3, 3\]")

    def grow(header):  # more elements than the data hold
        header["conv0.weight"]["shape"] = [8, 1, 3, 3]

    (copy / WEIGHTS).write_bytes(original)
    _rewrite_header(copy / WEIGHTS, grow)
    _refused(copy, "not a valid safetensors file")

    def overlap(header):
        header["conv0.bias"]["data_offsets"] = header["conv0.weight"]["data_offsets"]

    (copy / WEIGHTS).write_bytes(original)
    _rewrite_header(copy / WEIGHTS, overlap)
    _refused(copy, "not a valid safetensors file")

    (copy / WEIGHTS).write_bytes(b"\xff" * 8 + original[8:])  # absurd header length
    _refused(copy, "not a valid safetensors file")


def test_tensors_that_do_not_fit_the_configured_architecture_are_refused(copy, saved):
    loaded = load_checkpoint(saved[0])
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}

    wrong = {**state, "conv0.weight": torch.zeros(5, 1, 3, 3)}
    (copy / WEIGHTS).write_bytes(save_safetensors(wrong))
    _refused(copy, "conv0.weight")

    extra = {**state, "backdoor": torch.zeros(1)}
    (copy / WEIGHTS).write_bytes(save_safetensors(extra))
    _refused(copy, "extra")

    missing = {k: v for k, v in state.items() if k != "out.bias"}
    (copy / WEIGHTS).write_bytes(save_safetensors(missing))
    _refused(copy, "missing")

    doubles = {k: v.double() for k, v in state.items()}
    (copy / WEIGHTS).write_bytes(save_safetensors(doubles))
    _refused(copy, "float64")

    (copy / WEIGHTS).write_bytes(save_safetensors(state))
    config = json.loads((copy / CONFIG).read_text())
    config["model"]["channels"] = [8]  # the config now describes another architecture
    (copy / CONFIG).write_text(json.dumps(config))
    _refused(copy, r"conv0\.weight is torch.float32 \[4, 1, 3, 3\]")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"format": "aegis-model/1", "format": "x"}', "duplicate key"),
        (b'{"x": NaN}', "NaN"),
        (b"[]", "unknown format"),
        (b'{"format": "aegis-model/2"}', "unknown format"),
        (b'{"format": "aegis-model/1"}', "lacks"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_invalid_config_is_refused(copy, content, match):
    (copy / CONFIG).write_bytes(content)
    _refused(copy, match)


def test_config_whose_data_spec_is_invalid_or_does_not_fit_the_model_is_refused(copy):
    config = json.loads((copy / CONFIG).read_text())
    (copy / CONFIG).write_text(json.dumps({**config, "data": {**config["data"], "classes": 3}}))
    _refused(copy, "does not fit")
    (copy / CONFIG).write_text(json.dumps({**config, "data": {"kind": "image"}}))
    _refused(copy, "data spec")
    (copy / CONFIG).write_text(json.dumps({**config, "model": {"kind": "cnn"}}))
    _refused(copy, "config.json")


def test_no_pickle_or_torch_load_in_the_training_code():
    import aegis.train

    for path in Path(aegis.train.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "torch.load" not in text and "import pickle" not in text, path.name
