"""Surrogates: each family fits, saves without pickle and loads to the same answers."""

from __future__ import annotations

import json

import pytest

from aegis.attack.extract import agreement, extract, knockoff_rows
from aegis.attack.surrogate import FAMILIES, SurrogateError, fit_surrogate, load_surrogate


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_learns_and_round_trips(digits, family, tmp_path):
    x, y = digits
    surrogate = fit_surrogate(family, x[:600], y[:600], classes=10)
    assert agreement(surrogate, x[1000:1300], y[1000:1300]) > 0.8
    surrogate.save(tmp_path / "s")
    assert not list((tmp_path / "s").glob("*.pkl"))
    again = load_surrogate(tmp_path / "s")
    assert (again.predict(x[1000:1100]) == surrogate.predict(x[1000:1100])).all()


def test_a_directory_that_is_not_a_surrogate_is_refused(digits, tmp_path):
    x, y = digits
    fit_surrogate("logreg", x[:200], y[:200], classes=10).save(tmp_path / "s")
    meta = tmp_path / "s" / "surrogate.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"family": "pickle"}))
    with pytest.raises(SurrogateError):
        load_surrogate(tmp_path / "s")
    with pytest.raises(SurrogateError):
        load_surrogate(tmp_path / "missing")


def test_attacks_use_their_budget_and_stay_in_the_pool_range(digits):
    x, y = digits
    oracle = lambda rows: fit.predict(rows)  # noqa: E731 - a victim stand-in
    fit = fit_surrogate("logreg", x, y, classes=10)
    for kind in ("natural", "jacobian", "knockoff"):
        run = extract(kind, oracle, queries=60, pool=x[:300], classes=10, family="logreg")
        assert run.queries == 60
        assert run.rows.min() >= x[:300].min() and run.rows.max() <= x[:300].max()
    assert run.kind == "knockoff"


def test_knockoff_needs_images():
    with pytest.raises(ValueError, match="square"):
        knockoff_rows(3, features=30, low=0, high=1, seed=0)
