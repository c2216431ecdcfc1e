"""What evaluation measures beyond the test split: the trusted set, the backdoor scan, the
adversarial-input detector.

- The **trusted set** (``evaluate.trusted_set``): clean accuracy and our PGD's robust
  accuracy at the training ε on its rows, which the model was kept from; the
  promotion gates hold them to the same thresholds as the test split's.
- The **model scan** (``screen.model_scan``): a trigger search on the trained model
  (:mod:`aegis.screens.model_scan`); a flagged model gets the evaluation flag
  ``backdoor``, which the ``evaluation_flags`` gate turns into a refused promotion.
- The **detector** (``evaluate.squeeze``): feature squeezing
  (:mod:`aegis.evaluate.squeeze`) calibrated on the validation split's clean inputs
  (half the test split when there is none), its false-positive rate measured on the
  test inputs it was not calibrated on; the gateway reads it from the signed
  ``metrics.json`` (``detector``).
- The **extraction monitor's reference** (``evaluate.extraction``): penultimate-feature
  class statistics and thresholds (:mod:`aegis.evaluate.extraction`), ``extraction``
  in ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aegis.errors import ConfigError
from aegis.ledger import Ledger


@dataclass(frozen=True)
class ExtraChecks:
    metrics: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)  # code -> reason


def _trusted_metrics(ledger: Ledger, loaded, ref: str, *, domain, train_params) -> dict:
    import numpy as np

    from aegis.evaluate.attacks import pgd_correct, predict_correct
    from aegis.pipeline.trusted import load_trusted
    from aegis.train.data import to_tensors

    trusted = load_trusted(ledger, ref)
    try:
        x, y = to_tensors(trusted.frame, np.arange(len(trusted.frame)), loaded.spec)
    except KeyError:
        missing = f"evaluate.trusted_set: {ref} lacks the model's feature columns"
        raise ConfigError(missing) from None
    params = ledger.ws.params().evaluate
    clean = predict_correct(loaded.model, x, y)
    robust = pgd_correct(
        loaded.model, x, y, eps=train_params.epsilon, steps=params.pgd_steps,
        restarts=params.pgd_restarts, domain=domain, seed=train_params.seed,
    )  # fmt: skip
    return {
        "set": ref,
        "rows": len(y),
        "clean_acc": round(float(np.mean(clean)), 6),
        "robust_acc": round(float(np.mean(clean & robust)), 6),
    }


def _scan(ledger: Ledger, loaded, x, y, *, domain, seed: int) -> tuple[dict, dict[str, str]]:
    from aegis.screens.model_scan import scan_model

    settings = ledger.ws.params().screen.model_scan.model_dump()
    settings.pop("enabled")
    started = time.perf_counter()
    threads = ledger.ws.params().train.threads
    scan = scan_model(loaded.model, x, y, domain=domain, seed=seed, threads=threads, **settings)
    record = {
        "flagged": scan.flagged, "score": round(float(scan.score), 6),
        "threshold": scan.threshold, "target": scan.target, "details": scan.details,
        "seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip
    if not scan.flagged:
        return record, {}
    reason = (
        f"the trigger search found a backdoor towards class {scan.target} (score "
        f"{scan.score:.2f}, threshold {scan.threshold:.2f})"
    )
    return record, {"backdoor": reason}


@contextlib.contextmanager
def _training_threads(train_params):
    """The training's thread count: scores (and so thresholds) are then the same floats on
    every re-evaluation, whatever the process's default."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(train_params.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _detector(ledger: Ledger, loaded, x_val, x_test, *, train_params) -> dict[str, Any]:
    from aegis.evaluate.squeeze import held_out_detector

    with _training_threads(train_params):
        return held_out_detector(
            loaded.model, kind=loaded.spec.kind, params=ledger.ws.params().evaluate.squeeze,
            x_val=x_val, x_test=x_test, seed=train_params.seed,
        )  # fmt: skip


def _extraction(loaded, train, x_val, x_test, params, *, train_params) -> dict[str, Any]:
    from aegis.evaluate.extraction import calibrate_extraction

    # the OOD threshold on inputs the model never trained on: validation, else the test split
    x_calib = x_val if len(x_val) else x_test
    with _training_threads(train_params):
        record = calibrate_extraction(
            loaded.model, x_fit=train[0], y_fit=train[1], x_calib=x_calib,
            ood_rate=params.ood_rate, streams=params.streams, seed=train_params.seed,
        )  # fmt: skip
    if not len(x_val):
        record["calibrated_on"]["ood_threshold"] = "test"
    return record


def _monitor(loaded, x_test, y_test, extraction: dict | None, detector: dict | None, params,
             *, train_params, test_rows, serve) -> dict[str, Any]:  # fmt: skip
    """The production monitor's reference: the test split's outputs, its errors (for
    feedback), OOD scores (when the extraction reference is there to score them), the
    detector's false positives on it (when the gateway's detector is fitted) and its
    inputs as the prediction log keeps them (``serve.log_inputs``; ``test_rows`` are in
    dataset units, as requests are)."""
    from aegis.evaluate.extraction import ExtractionReference
    from aegis.evaluate.input_shift import InputBins, logged_features
    from aegis.evaluate.monitoring import calibrate_monitor, model_outputs, window_alpha

    score = None
    if extraction is not None:
        ref = ExtractionReference.from_json(extraction)

        def score(x):
            return ref.scores(loaded.model, x)

    alpha = window_alpha(
        false_alarms_per_day=params.false_alarms_per_day,
        windows_per_day=params.windows_per_day,
        confirm=params.confirm,
    )
    with _training_threads(train_params):
        probs, ood = model_outputs(loaded.model, x_test, ood=score)
        import numpy as np

        correct = probs.argmax(axis=1) == np.asarray(y_test)
        features = None if test_rows is None else logged_features(test_rows, serve.log_inputs)
        bins = None if features is None else InputBins.fit(features, serve.log_inputs)
        record = calibrate_monitor(probs=probs, ood=ood, correct=correct, window=params.window,
                                   flags=_detector_flags(detector), alpha=alpha,
                                   inputs=bins, features=features,
                                   extraction=extraction is not None
                                   and serve.on_extraction != "off",
                                   boots=params.boots, seed=train_params.seed)  # fmt: skip
    record["calibrated_on"] |= {"split": "test", "confirm": params.confirm}
    return record


def _detector_flags(detector: dict | None) -> tuple[int, int] | None:
    """The detector's clean flags on the test split, ``(flagged, rows)``, from its record."""
    try:
        rows = int(detector["test_rows"])  # type: ignore[index]
        return round(float(detector["test_fpr"]) * rows), rows  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None  # no detector (or none measured on held-out rows)


def post_training_checks(
    ledger: Ledger,
    loaded,
    x_test,
    y_test,
    *,
    x_val,
    domain,
    train_params,
    trusted_ref: str | None,
    train: tuple | None = None,
    test_rows=None,
) -> ExtraChecks:
    """The trusted-set figures, the model scan, the gateway's detectors and the production
    monitor's reference (as configured).

    ``x_val`` are the validation split's inputs (possibly none): the detector's calibration set.
    ``train`` (inputs, labels) of the training split: the extraction monitor's reference.
    ``test_rows``: the test split's features in dataset units (the monitor's input bins).

    Raises:
        RefusedError: ``trusted-set``: the trusted set is not an accepted, validated version.
        ConfigError: The trusted set's columns are not the model's.
    """
    metrics: dict[str, Any] = {}
    flags: dict[str, str] = {}
    if trusted_ref is not None:
        metrics["trusted"] = _trusted_metrics(
            ledger, loaded, trusted_ref, domain=domain, train_params=train_params
        )
    if ledger.ws.params().screen.model_scan.enabled:
        metrics["model_scan"], flags = _scan(
            ledger, loaded, x_test, y_test, domain=domain, seed=train_params.seed
        )
    if ledger.ws.params().evaluate.squeeze.enabled:
        metrics["detector"] = _detector(ledger, loaded, x_val, x_test, train_params=train_params)
    extraction = ledger.ws.params().evaluate.extraction
    if extraction.enabled and train is not None and len(train[0]):
        metrics["extraction"] = _extraction(loaded, train, x_val, x_test, extraction,
                                            train_params=train_params)  # fmt: skip
    monitor = ledger.ws.params().monitor
    if monitor.enabled and len(x_test) >= monitor.window + 20:  # calibrate_monitor's minimum
        metrics["monitor"] = _monitor(loaded, x_test, y_test, metrics.get("extraction"),
                                      metrics.get("detector"), monitor,
                                      train_params=train_params, test_rows=test_rows,
                                      serve=ledger.ws.params().serve)  # fmt: skip
    return ExtraChecks(metrics, flags)
