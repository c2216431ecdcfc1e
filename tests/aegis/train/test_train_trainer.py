"""The training loop: reproducible digests, early stopping, progress, real accuracy."""

from __future__ import annotations

import json

import pytest
import torch

import aegis.train.trainer as trainer
from aegis.config import DPParams, ModelParams
from aegis.errors import ConfigError
from aegis.train.checkpoint import WEIGHTS, load_checkpoint, weights_of
from aegis.train.data import prepare, to_tensors
from aegis.train.defenses import pgd_examples
from aegis.train.progress import RichProgress
from aegis.train.trainer import train_and_save, train_model

TINY = ModelParams(channels=[4], hidden=[16])


@pytest.mark.parametrize(
    "overrides",
    [
        {"defense": "pgd", "steps": 2, "threads": 2},  # the default thread count
        {"defense": "fgsm_rs", "privacy": "dp", "dp": DPParams(accountant="rdp"), "threads": 1},
    ],
    ids=["pgd", "dp-fgsm_rs"],
)
def test_same_inputs_give_the_same_digest_and_another_seed_does_not(
    digits, as_data, small_params, tmp_path, overrides
):
    data = as_data(digits, 250)
    params = small_params(model=TINY, epochs=2, batch_size=32, **overrides)

    first = train_and_save(data, params, out_dir=tmp_path / "a")
    second = train_and_save(data, params, out_dir=tmp_path / "b")
    other = train_and_save(data, params.model_copy(update={"seed": 1}), out_dir=tmp_path / "c")

    assert (tmp_path / "a" / WEIGHTS).read_bytes() == (tmp_path / "b" / WEIGHTS).read_bytes()
    assert first == second != other
    assert load_checkpoint(tmp_path / "b").digest == second


def test_training_leaves_the_global_torch_state_as_it_was(digits, as_data, small_params):
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    train_model(as_data(digits, 200), small_params(model=TINY, threads=1))
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.get_rng_state(), rng)


def test_prepared_data_and_training_data_train_the_same_model(digits, as_data, small_params):
    data, params = as_data(digits, 200), small_params(model=TINY)
    a = train_model(data, params).model.state_dict()
    prepared = prepare(data, params)
    b = train_model(tuple(prepared), params).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_progress_callback_gets_each_epoch_and_nothing_is_printed(
    digits, as_data, small_params, capsys
):
    records = []
    result = train_model(
        as_data(digits, 300), small_params(model=TINY, epochs=3), progress=records.append
    )
    assert records == result.history and [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[0]) == {
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"
    }  # fmt: skip
    assert json.loads(json.dumps(records)) == records
    train_model(as_data(digits, 200), small_params(model=TINY))  # no callback, not a terminal
    assert capsys.readouterr() == ("", "")


def test_rich_bars_show_epoch_loss_and_accuracy(capsys):
    with RichProgress(2) as bars:
        bars.start(1, 3)
        for _ in range(3):
            bars.batch(0.5, 0.75)
        bars.end({"train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.25, "val_acc": 0.9})
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "acc 0.750" in err and "val loss 0.2500" in err


def test_early_stopping_restores_the_best_weights(digits, as_data, small_params, monkeypatch):
    losses = iter([1.0, 0.5, 0.7, 0.6, 0.1])
    snapshots = []

    def scripted(model, x, y):
        snapshots.append(weights_of(model))
        return next(losses), 0.5

    monkeypatch.setattr(trainer, "_evaluate", scripted)
    result = train_model(
        as_data(digits, 300), small_params(model=TINY, epochs=5, early_stop_patience=2)
    )

    assert result.stopped_early and result.best_epoch == 2 and len(result.history) == 4
    best = snapshots[1]
    assert all(torch.equal(result.model.state_dict()[k], best[k]) for k in best)


def test_early_stopping_needs_a_validation_split(digits, as_data, small_params):
    params = small_params(model=TINY, early_stop_patience=2, val_fraction=0.0)
    with pytest.raises(ConfigError, match="val_fraction"):
        train_model(as_data(digits, 200), params)


def test_dp_trained_model_comes_back_plain_and_attackable(digits, as_data, small_params):
    params = small_params(model=TINY, privacy="dp", dp=DPParams(accountant="rdp"))
    result = train_model(as_data(digits, 200), params)
    model = result.model
    assert type(model).__name__ == "Sequential" and not model.training
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    x, y = to_tensors(as_data(digits, 200).frame, result.split.test, result.spec)
    x_adv = pgd_examples(model, x, y, eps=0.1, step_size=0.05, steps=2, domain=(0.0, 1.0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_tabular_mlp_learns_breast_cancer(cancer, as_data, small_params):
    params = small_params(model=ModelParams(hidden=[32]), epochs=5, batch_size=32, defense="pgd",
                          epsilon=0.1, steps=3)  # fmt: skip
    result = train_model(as_data(cancer), params)
    x, y = to_tensors(cancer, result.split.test, result.spec)
    with torch.no_grad():
        accuracy = (result.model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
    assert result.history[-1]["val_acc"] > 0.85
