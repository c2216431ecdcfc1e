"""Feature squeezing: the squeezers, the detector's JSON, its calibration, and PGD examples.

The digits models are the evaluation tests' session fixtures (conftest: a small CNN, plain
and PGD-trained); the squeezers are checked against hand-computed arrays and scipy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter as scipy_median
from torch import nn

from aegis.config import SqueezeParams
from aegis.evaluate.attacks import pgd_examples
from aegis.evaluate.squeeze import (
    SqueezeDetector,
    bit_depth,
    calibrate_detector,
    conformal_threshold,
    grid,
    held_out_detector,
    median_filter,
)

EPS = 0.1  # the default training eps for digits, as the conftest's models were trained
DOMAIN = (0.0, 1.0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch single-threaded (tiny models; a shared 2-core machine), then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- squeezers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_bit_depth_keeps_2_to_the_bits_levels(bits):
    x = torch.linspace(0, 1, 1001)
    levels = 2**bits - 1

    out = bit_depth(x, bits)

    assert set(np.round(out.numpy() * levels, 4)) == set(map(float, range(levels + 1)))
    assert (out - x).abs().max() <= 0.5 / levels + 1e-6  # the nearest level


def test_one_bit_is_a_threshold_at_one_half():
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 0.8, 1.0])
    assert bit_depth(x, 1).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_the_2x2_median_of_a_known_array():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]

    out = median_filter(x, 2)

    # pixel (i, j) takes the upper median of rows i-1..i and columns j-1..j, mirrored at
    # the top and left border: (1, 1) -> {1, 2, 4, 5} -> 4, (0, 1) -> {1, 1, 2, 2} -> 2
    assert out.view(3, 3).tolist() == [[1, 2, 3], [4, 4, 5], [7, 7, 8]]


def test_the_2x2_median_removes_an_isolated_pixel_and_keeps_a_stroke():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 1, 4] = 1.0  # salt
    x[0, 0, 2:4, :] = 1.0  # a two-pixel-wide bar

    out = median_filter(x, 2)[0, 0]

    assert out[1, 4] == 0
    assert out[2:4].sum() > 0 and out[:2, :3].sum() == 0


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_the_median_filter_is_scipys(size):
    x = torch.rand(3, 2, 8, 7, generator=torch.Generator().manual_seed(size))

    ours = median_filter(x, size).numpy()

    assert np.array_equal(ours, scipy_median(x.numpy(), size=(1, 1, size, size), mode="reflect"))


@pytest.mark.parametrize("size", [0, 1])
def test_a_median_of_size_0_or_1_changes_nothing(size):
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(median_filter(x, size), x)


def test_the_table_grid_rounds_to_multiples_of_the_step():
    x = torch.tensor([[-0.76, -0.24, 0.0, 0.26, 1.1]])
    assert grid(x, 0.5).tolist() == [[-1.0, -0.0, 0.0, 0.5, 1.0]]


# -- the detector's JSON --------------------------------------------------------------------------

GOOD = {"kind": "image", "bits": 4, "median": 2, "table_step": 0.5, "threshold": 0.25}


def test_the_json_round_trips_exactly():
    detector = SqueezeDetector.from_json(GOOD)

    assert detector.to_json() == GOOD
    assert SqueezeDetector.from_json(json.loads(json.dumps(detector.to_json()))) == detector


@pytest.mark.parametrize(
    "change",
    [
        {"threshold": None},
        {"threshold": math.nan},
        {"threshold": math.inf},
        {"threshold": -0.1},
        {"threshold": "0.2"},
        {"threshold": True},
        {"bits": 4.0},
        {"bits": 0},
        {"bits": 9},
        {"bits": True},
        {"median": -1},
        {"median": 6},
        {"median": "2"},
        {"table_step": 0},
        {"table_step": math.inf},
        {"table_step": [0.5]},
        {"kind": "audio"},
        {"kind": ["image"]},
        {"kind": None},
    ],
)
def test_from_json_refuses_a_bad_value(change):
    with pytest.raises(ValueError):
        SqueezeDetector.from_json({**GOOD, **change})


@pytest.mark.parametrize(
    "data",
    [
        {k: v for k, v in GOOD.items() if k != "threshold"},
        {**GOOD, "calibrated_on": "validation"},
        {**GOOD, 1: 2},
        [GOOD],
        "GOOD",
        None,
    ],
)
def test_from_json_refuses_other_keys_or_no_dict(data):
    with pytest.raises(ValueError):
        SqueezeDetector.from_json(data)


# -- calibration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "fpr"), [(100, 0.04), (180, 0.04), (1000, 0.04), (57, 0.1)])
def test_the_conformal_threshold_is_the_stated_rank(n, fpr):
    scores = np.random.default_rng(n).permutation(np.arange(n, dtype=float))

    threshold = conformal_threshold(scores, fpr)

    k = math.ceil((1 - fpr) * (n + 1))  # the docstring's rank, 1-based
    assert threshold == k - 1  # the k-th smallest of 0..n-1
    assert (scores > threshold).sum() <= fpr * n
    assert (scores > threshold).sum() >= fpr * n - 2  # not needlessly high


def test_too_few_scores_for_the_rank_give_the_largest():
    assert conformal_threshold(np.array([0.3, 0.1, 0.2]), 0.04) == 0.3


def test_no_scores_or_a_bad_target_are_refused():
    with pytest.raises(ValueError):
        conformal_threshold(np.array([]), 0.04)
    with pytest.raises(ValueError):
        conformal_threshold(np.array([0.1]), 0.0)


def test_scores_in_one_pass_are_the_per_squeezer_maximum(digits, pgd_trained):
    detector = SqueezeDetector(kind="image", bits=3, median=2, threshold=0.0)
    x = digits.x_test[:50]

    with torch.no_grad():
        p = torch.softmax(pgd_trained(x), 1)
        by_bits = (torch.softmax(pgd_trained(bit_depth(x, 3)), 1) - p).abs().sum(1)
        by_median = (torch.softmax(pgd_trained(median_filter(x, 2)), 1) - p).abs().sum(1)
    expected = torch.maximum(by_bits, by_median).numpy()

    scores = detector.scores(pgd_trained, x)
    assert scores.shape == (50,) and scores.dtype == np.float64
    assert np.allclose(scores, expected, atol=1e-5)
    assert np.allclose(detector.scores(pgd_trained, x, probs=p), expected, atol=1e-5)
    assert np.array_equal(detector.flags(pgd_trained, x), scores > 0.0)
    assert detector.scores(pgd_trained, x[:0]).shape == (0,)


def test_calibration_hits_the_quantile(digits, pgd_trained):
    params = SqueezeParams(bits=4, median=0, target_fpr=0.1, samples=200)
    x_clean = digits.x_test[:300]  # more than `samples`: a seeded subset of 200

    detector = calibrate_detector(pgd_trained, x_clean, kind="image", params=params, seed=3)

    assert (detector.kind, detector.bits, detector.median) == ("image", 4, 0)
    assert detector == calibrate_detector(pgd_trained, x_clean, kind="image", params=params, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(300, size=200, replace=False))
    scores = detector.scores(pgd_trained, x_clean[rows])
    assert detector.threshold == np.sort(scores)[math.ceil(0.9 * 201) - 1]
    assert 0.08 <= (scores > detector.threshold).mean() <= 0.1


def test_held_out_calibration_on_validation_or_half_the_test_split(digits, pgd_trained):
    params = SqueezeParams(median=0)
    x_val, x_test = digits.x_test[:150], digits.x_test[150:]

    on_val = held_out_detector(
        pgd_trained, kind="image", params=params, x_val=x_val, x_test=x_test, seed=0
    )
    halves = held_out_detector(
        pgd_trained, kind="image", params=params, x_val=x_val[:0], x_test=x_test, seed=0
    )

    assert on_val["calibrated_on"] == "validation"
    assert (on_val["calibration_rows"], on_val["test_rows"]) == (150, len(x_test))
    detector = SqueezeDetector.from_json({k: on_val[k] for k in GOOD})
    assert on_val["test_fpr"] == round(float(detector.flags(pgd_trained, x_test).mean()), 6)
    assert halves["calibrated_on"] == "test-half"
    assert halves["calibration_rows"] + halves["test_rows"] == len(x_test)
    assert abs(halves["calibration_rows"] - halves["test_rows"]) <= 1
    for record in (on_val, halves):
        assert 0 <= record["test_fpr"] <= 0.12  # target 4 %, on 150-300 clean digits


def test_a_table_detector_squeezes_by_the_grid(cancer_like):
    model, x = cancer_like
    detector = SqueezeDetector(kind="tabular", table_step=0.5, threshold=0.0)

    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        expected = (torch.softmax(model(grid(x, 0.5)), 1) - p).abs().sum(1).numpy()

    assert np.allclose(detector.scores(model, x), expected, atol=1e-6)


@pytest.fixture(scope="module")
def cancer_like() -> tuple[nn.Module, torch.Tensor]:
    """A fixed random MLP on standardized Gaussian rows: only the arithmetic is under test."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    return model, torch.randn(40, 30)


# -- against attacks -----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["undefended", "pgd_trained"])
@pytest.mark.usefixtures("one_thread")
def test_pgd_examples_score_higher_than_clean_inputs(request, digits, fixture):
    model = request.getfixturevalue(fixture)
    x_cal, x, y = digits.x_test[:150], digits.x_test[150:], digits.y_test[150:]
    params = SqueezeParams(bits=3, median=0)
    detector = calibrate_detector(model, x_cal, kind="image", params=params)
    adv, still_right = pgd_examples(model, x, y, eps=EPS, steps=20, domain=DOMAIN, seed=0)
    with torch.no_grad():
        fooled = (model(x).argmax(1) == y).numpy() & ~still_right
    clean, attacked = detector.scores(model, x), detector.scores(model, adv)[fooled]

    assert fooled.sum() >= 20
    # the successful examples are mostly flagged, clean inputs rarely
    assert np.median(attacked) > 3 * np.quantile(clean, 0.9)
    assert (attacked > detector.threshold).mean() >= 0.6
    assert (clean > detector.threshold).mean() <= 0.1


def test_the_report_shows_the_detector_escaped():
    from aegis.evaluate.report import render_report

    detector = {**GOOD, "calibrated_on": "<b>validation</b>", "calibration_rows": 179}
    page = render_report({"detector": {**detector, "test_fpr": 0.0361, "test_rows": 360}})

    line = next(ln for ln in page.split("<tr>") if "adversarial-input detector" in ln)
    assert "threshold 0.25" in line and "179 &lt;b&gt;validation&lt;/b&gt; inputs" in line
    assert "0.0361" in line and "<b>" not in line
