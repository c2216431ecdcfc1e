"""What evaluation measures beyond the test split: the trusted set and the backdoor scan.

- The **trusted set** (``evaluate.trusted_set``): clean accuracy and our PGD's robust
  accuracy at the training ε on its rows, which the model was kept from; the
  promotion gates hold them to the same thresholds as the test split's.
- The **model scan** (``screen.model_scan``): a trigger search on the trained model
  (:mod:`aegis.screens.model_scan`); a flagged model gets the evaluation flag
  ``backdoor``, which the ``evaluation_flags`` gate turns into a refused promotion.
"""

from __future__ import annotations

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


def post_training_checks(
    ledger: Ledger, loaded, x_test, y_test, *, domain, train_params, trusted_ref: str | None
) -> ExtraChecks:
    """The trusted-set figures and the model scan of one evaluation (as configured).

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
    return ExtraChecks(metrics, flags)
