"""The model the gateway serves: a verified release, its input spec and its signed policy.

:func:`load_served` is the only way the gateway gets a model: the registry resolves the
target, :func:`aegis.registry.verify.open_release` verifies the release (signature,
hashes, audit binding; never fetching: the gateway does not write to the workspace),
:func:`load_release_model` loads exactly the signed bytes. Serving settings come from
the release's signed ``params.yaml`` (``serve:``) and the adversarial-input detector's
threshold from its signed ``metrics.json`` (``detector``), so an edit to the
workspace's ``params.yaml`` changes nothing the gateway does until the next release.

Inputs are rows in the dataset's own columns and units; the model's saved
preprocessing (the :class:`aegis.train.data.DataSpec` of its checkpoint) turns them
into model inputs, exactly as training did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aegis.config import ServeParams
from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.registry.targets import Target
from aegis.registry.verify import (
    VerifiedRelease,
    load_release_model,
    open_release,
)
from aegis.timeutil import utc_now

# oneDNN's convolution is 2-4x slower than ATen's own on a batch of 2-8 rows (measured on
# the digits CNN, one thread: 1 row 71 vs 74 us, 2 rows 311 vs 102 us, 16 rows 371 vs
# 427 us), and faster from about 12: batches in between skip it.
ATEN_BELOW_ROWS = 12


class InputError(ValueError):
    """A request's rows do not fit the model's input spec (answered 422)."""


@dataclass(frozen=True)
class Prediction:
    """One request's answer, before the output policy shapes it."""

    labels: np.ndarray  # (n,) int
    probs: np.ndarray  # (n, classes) float32
    scores: np.ndarray | None  # (n,) detector scores; None: no detector, or not yet scored
    flagged: np.ndarray  # (n,) bool (all False until scored)
    deferred: bool = False  # the detector scores these rows later, off the request path


@dataclass(frozen=True)
class ServedModel:
    """A verified release, ready to answer."""

    release: VerifiedRelease
    loaded: Any  # aegis.train.checkpoint.LoadedModel
    params: ServeParams
    low: np.ndarray  # per-feature lowest accepted value (dataset units)
    high: np.ndarray
    detector: Any = None  # aegis.evaluate.squeeze.SqueezeDetector | None
    extraction: Any = None  # aegis.evaluate.extraction.ExtractionReference | None
    since: str = field(default_factory=utc_now)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.loaded.spec.feature_columns

    @property
    def version(self) -> str:
        return self.release.version

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers."""
        return {
            "name": self.release.model_name,
            "version": self.release.version,
            "model_digest": self.release.model_digest,
            "since": self.since,
            "features": len(self.columns),
            "classes": self.loaded.spec.classes,
            "output": self.params.output,
            "detector": self.detector is not None and self.params.on_adversarial != "off",
        }

    def rows_of_records(self, records: list[dict[str, float]]) -> np.ndarray:
        """Rows in model column order from ``{column: value}`` records.

        Raises:
            InputError: A record lacks a column or has one the model does not know.
        """
        columns = self.columns
        wanted = set(columns)
        out = np.empty((len(records), len(columns)), dtype=np.float64)
        for i, record in enumerate(records):
            if record.keys() != wanted:
                extra = sorted(set(record) - wanted)[:3]
                missing = sorted(wanted - set(record))[:3]
                what = f"unknown columns {extra}" if extra else f"missing columns {missing}"
                raise InputError(f"records[{i}]: {what}")
            out[i] = [record[c] for c in columns]
        return out

    def check_rows(self, rows: np.ndarray) -> None:
        """Shape, finiteness and domain (the training range, widened by ``domain_margin``).

        Raises:
            InputError: Naming the first offending row and feature.
        """
        if rows.ndim != 2 or rows.shape[1] != len(self.columns):
            width = rows.shape[1] if rows.ndim == 2 else "?"
            raise InputError(f"each row needs {len(self.columns)} features, got {width}")
        # one pass when all is well: NaN fails both comparisons, infinities the range
        if ((rows >= self.low) & (rows <= self.high)).all():
            return
        if not np.isfinite(rows).all():
            i, j = np.argwhere(~np.isfinite(rows))[0]
            raise InputError(f"inputs[{i}][{j}] is not a finite number")
        bad = (rows < self.low) | (rows > self.high)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            # the bounds themselves are not said: they are the training data's extremes
            raise InputError(
                f"inputs[{i}][{j}] ({self.columns[j]} = {rows[i, j]:g}) is outside the accepted "
                "range (the training data's, widened by serve.domain_margin)"
            )

    @property
    def detects(self) -> bool:
        return self.detector is not None and self.params.on_adversarial != "off"

    def predict(self, rows: np.ndarray) -> Prediction:
        """Labels and probabilities of checked ``rows`` (dataset units); flags by policy.

        ``serve.on_adversarial: refuse`` needs the flags before answering: the rows and
        their squeezed copies go through the model in one pass
        (:meth:`SqueezeDetector.predict`). Under ``flag`` the answer does not depend on
        them: the prediction is one plain pass and the rows are scored later, in a batch
        (:meth:`scores_of`, from the prediction log's flusher), where a batched pass costs
        a fraction of a per-request one.
        """
        import torch

        x = torch.from_numpy(model_inputs(rows, self.loaded.spec))
        model = self.loaded.model
        detects = self.detects
        if detects and self.params.on_adversarial == "refuse":
            views = len(rows) * (1 + len(self.detector.squeezers()))
            probs, scores = on_kernels(views, self.detector.predict, model, x)
            return Prediction(probs.argmax(axis=1), probs, scores,
                              scores > self.detector.threshold)  # fmt: skip
        with torch.no_grad():
            logits = on_kernels(len(rows), model, x)
        probs = torch.softmax(logits, dim=1).numpy()
        none = np.zeros(len(rows), dtype=bool)
        return Prediction(probs.argmax(axis=1), probs, None, none, deferred=detects)

    def scores_of(self, rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Detector scores of rows this model answered with ``probs`` (deferred scoring)."""
        x = model_inputs(rows, self.loaded.spec)
        views = len(rows) * len(self.detector.squeezers())
        return on_kernels(views, self.detector.scores, self.loaded.model, x, probs=probs)

    def shape_output(self, prediction: Prediction) -> dict[str, Any]:
        """The answer the output policy allows (``serve.output``, ``serve.round``)."""
        out: dict[str, Any] = {"labels": prediction.labels.tolist(), "version": self.version}
        digits = self.params.round
        if self.params.output == "probs":
            out["probs"] = np.round(prediction.probs.astype(np.float64), digits).tolist()
        elif self.params.output == "topk":
            k = min(self.params.topk, prediction.probs.shape[1])
            order = np.argsort(-prediction.probs, axis=1)[:, :k]
            out["topk"] = [
                [{"label": int(c), "p": round(float(p[c]), digits)} for c in top]
                for top, p in zip(order, prediction.probs, strict=True)
            ]
        return out


def on_kernels(batch: int, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on ATen's kernels instead of oneDNN's for 2 to 11 rows.

    The switch is process-wide and set back to torch's default (on) afterwards, never to
    a value read before (two threads restoring each other's could leave it off); a
    deferred scoring pass that overlaps a small request may run on the other kernels:
    slower, the same results. One row and large batches (most calls) touch nothing.
    """
    if not 2 <= batch < ATEN_BELOW_ROWS:
        return fn(*args, **kwargs)
    import torch

    torch.backends.mkldnn.enabled = False
    try:
        return fn(*args, **kwargs)
    finally:
        torch.backends.mkldnn.enabled = True


def model_inputs(rows: np.ndarray, spec) -> np.ndarray:
    """The checkpoint's preprocessing (as :func:`aegis.train.data.to_tensors` applies it)."""
    if spec.kind == "image":
        x = np.clip(rows / spec.scale, 0.0, 1.0).reshape(len(rows), *spec.image_shape)
    else:
        x = (rows - np.asarray(spec.mean)) / np.asarray(spec.std)
    return x.astype(np.float32)


def input_domain(spec, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature accepted range in dataset units: the training range, widened.

    Images share one range, ``[0, scale]`` (``scale`` is the training maximum);
    tables use each feature's training minimum and maximum, widened by ``margin``
    times its range (or its standard deviation, for a constant feature). A checkpoint
    from before the range was recorded falls back to mean +- 10 standard deviations.
    """
    n = len(spec.feature_columns)
    if spec.kind == "image":
        pad = margin * spec.scale
        return np.full(n, -pad), np.full(n, spec.scale + pad)
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    if spec.low is None:
        return mean - 10 * std, mean + 10 * std
    low, high = np.asarray(spec.low), np.asarray(spec.high)
    width = np.where(high > low, high - low, std)
    return low - margin * width, high + margin * width


def release_serve_params(verified: VerifiedRelease) -> ServeParams:
    """The ``serve:`` section of the release's signed ``params.yaml``.

    Raises:
        ConfigError: The signed params do not parse under this version of Aegis.
    """
    from aegis.registry.verify import release_params

    return release_params(verified).serve


def _detector(verified: VerifiedRelease, kind: str):
    record = verified.metrics.get("detector")
    if record is None:
        return None
    from aegis.evaluate.squeeze import SqueezeDetector

    try:
        fields = {k: v for k, v in record.items() if k in SqueezeDetector.__dataclass_fields__}
        detector = SqueezeDetector.from_json(fields)
    except (ValueError, TypeError, AttributeError) as exc:
        raise RefusedError("detector", f"{verified}: metrics.json's detector: {exc}") from None
    if not math.isfinite(detector.threshold):
        raise RefusedError("detector", f"{verified}: the detector's threshold is not finite")
    if detector.kind != kind:
        raise RefusedError(
            "detector", f"{verified}: a detector for {detector.kind} inputs on a {kind} model"
        )
    return detector


def extraction_reference(verified: VerifiedRelease):
    """The extraction monitor's signed reference (None: the release has none).

    Raises:
        RefusedError: ``extraction``: the signed record is malformed.
    """
    record = verified.metrics.get("extraction")
    if record is None:
        return None
    from aegis.evaluate.extraction import ExtractionReference

    try:
        return ExtractionReference.from_json(record)
    except (ValueError, TypeError, KeyError) as exc:
        raise RefusedError("extraction", f"{verified}: metrics.json's extraction: {exc}") from None


def load_served(ledger: Ledger, target: Target) -> ServedModel:
    """Verifies and loads the release ``target`` names, with its serving policy.

    Raises:
        RefusedError: Any verification check (``registry``, ``fetch``, ``signature``,
            ``integrity``, ...), or ``detector``: its signed detector is malformed.
        ConfigError: Its signed ``params.yaml`` does not parse.
    """
    return served_model(open_release(ledger, target, fetch=False))


def load_sealed(ledger: Ledger, directory: Path, identity: Path) -> ServedModel:
    """Decrypts a sealed export in memory, verifies it as a registry release, loads it.

    Nothing is written: the weights go from the decrypted archive to the model, and the
    served release keeps the other signed files' bytes (for ``read_verified``), not the
    weights'.

    Raises:
        RefusedError: ``seal`` (identity not an active serving identity of the trust
            store, not sealed to it, a changed archive), or any verification check.
        ConfigError: Its signed ``params.yaml`` does not parse.
    """
    from aegis.registry.seal import open_sealed
    from aegis.train.digest import WEIGHTS

    served = served_model(open_sealed(ledger, directory, identity))
    contents = served.release.contents or {}
    kept = {name: data for name, data in contents.items() if name != f"model/{WEIGHTS}"}
    return replace(served, release=replace(served.release, contents=kept))


def served_model(verified: VerifiedRelease) -> ServedModel:
    """A verified release loaded with its signed serving policy and detector."""
    import torch

    torch.set_num_threads(1)  # one request is small: threads cost more than they give
    loaded = load_release_model(verified)
    if loaded.spec.kind == "image":
        # channels-last convolutions and pooling run about twice as fast on a batch (the
        # detector's deferred pass, large requests) and no slower on one row; the same
        # weights, results equal to ~1e-7
        loaded.model.to(memory_format=torch.channels_last)
    params = release_serve_params(verified)
    low, high = input_domain(loaded.spec, params.domain_margin)
    return ServedModel(
        release=verified,
        loaded=loaded,
        params=params,
        low=low,
        high=high,
        detector=_detector(verified, loaded.spec.kind),
        extraction=extraction_reference(verified),
    )
