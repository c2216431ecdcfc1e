"""The extraction monitor's statistics on small real data (a real model on digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aegis.evaluate.extraction import (
    ExtractionReference,
    KeyState,
    calibrate_extraction,
)


@pytest.fixture(scope="module")
def fitted():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy((x / 16.0).astype(np.float32))
    y = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[:1200]), y[:1200]).backward()
        opt.step()
    net.eval()
    record = calibrate_extraction(
        net, x_fit=x[:1200], y_fit=y[:1200], x_calib=x[1200:1500], streams=3, length=600
    )
    return net, x, ExtractionReference.from_json(record), record


def _answers(net, ref, x):
    far = ref.scores(net, x) > ref.ood_threshold
    with torch.no_grad():
        return x.reshape(len(x), -1).numpy(), net(x).argmax(1).numpy(), far


def _stream(net, ref, x):
    """One batch, as a gateway flush hands it over."""
    state = KeyState()
    state.observe_checked(*_answers(net, ref, x), ref)
    return state


def _neighbours(x, rounds: int = 4):
    rng = np.random.default_rng(0)
    steps = [x]
    for _ in range(rounds):  # Jacobian-like: each point again, one signed step away
        last = steps[-1]
        signs = torch.from_numpy(np.sign(rng.standard_normal(last.shape)).astype(np.float32))
        steps.append((last + 0.1 * signs).clamp(0, 1))
    return torch.cat(steps)


def test_the_reference_is_fitted_on_training_data_and_round_trips(fitted):
    _, _, ref, record = fitted
    assert record["calibrated_on"]["fit"] == "train"
    assert 0 < ref.delta < record["calibrated_on"]["lowest_w"]
    again = ExtractionReference.from_json(ref.to_json())
    assert again.delta == ref.delta and again.means.shape == ref.means.shape


@pytest.mark.parametrize(
    "change",
    [
        {"delta": 1.5},
        {"ood_rate": 0},
        {"means": [[1.0]]},
        {"ood_threshold": float("nan")},
        {"min_queries": "20"},
    ],
)
def test_a_malformed_reference_is_refused(fitted, change):
    with pytest.raises(ValueError):
        ExtractionReference.from_json(fitted[2].to_json() | change)


def test_held_out_digits_in_random_order_are_not_flagged(fitted):
    net, x, ref, _ = fitted
    held_out = x[1500:][torch.from_numpy(np.random.default_rng(1).permutation(len(x) - 1500))]
    state = _stream(net, ref, held_out)
    assert state.flagged_at is None and state.queries == len(held_out)


def test_synthetic_neighbours_are_flagged_by_the_distance_test(fitted):
    net, x, ref, _ = fitted
    state = _stream(net, ref, _neighbours(x[1500:1520]))
    assert state.flagged_at is not None and state.flagged_at <= 120
    assert state.signal == "prada"


def test_an_attack_followed_by_benign_rows_in_one_flush_is_still_flagged(fitted):
    net, x, ref, _ = fitted
    batch = torch.cat([_neighbours(x[1500:1520]), x[1520:1797]])
    state = _stream(net, ref, batch)
    assert state.signal == "prada" and state.flagged_at <= 120
    late = KeyState()  # tested once, at the batch's end: the dip is diluted away
    late.observe(*_answers(net, ref, batch))
    assert not late.evidence(ref).flagged


def test_out_of_domain_queries_are_flagged_by_the_ood_rate(fitted):
    net, _, ref, _ = fitted
    noise = torch.from_numpy(np.random.default_rng(2).random((200, 64)).astype(np.float32))
    state = _stream(net, ref, noise)
    assert state.flagged_at is not None and state.flagged_at <= 40
    assert state.signal == "ood"


def test_repeats_are_not_counted(fitted):
    net, x, ref, _ = fitted
    state = _stream(net, ref, x[:1].repeat(50, 1))
    assert state.queries == 50 and state.counted == 1 and not state.distances


def test_a_training_split_without_a_class_fits_a_finite_reference(fitted):
    net, x, _, _ = fitted
    from sklearn.datasets import load_digits

    y = torch.from_numpy(load_digits(return_X_y=True)[1].astype(np.int64))
    keep = (y[:1200] != 1) & (y[:1200] != 3)  # a delivery whose 1s and 3s were relabelled away
    record = calibrate_extraction(net, x_fit=x[:1200][keep], y_fit=y[:1200][keep],
                                  x_calib=x[1200:1500], streams=2, length=300)  # fmt: skip
    ref = ExtractionReference.from_json(record)  # finite: it loads
    assert ref.means.shape[0] == 8 and np.isfinite(ref.scores(net, x[1500:])).all()
