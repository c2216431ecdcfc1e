"""Models to query: a gateway over HTTP, a surrogate directory, an Aegis checkpoint.

``aegis attack extract`` queries the gateway (:class:`HttpOracle`); ``aegis watermark
verify`` queries a suspect, which may be any of the three (:func:`suspect_predictor`).
Every answer is a label per row; rows are in the dataset's own units.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aegis.errors import UsageError

Predictor = Callable[[np.ndarray], np.ndarray]


class OracleError(RuntimeError):
    """The model could not be queried (a status other than 429, a malformed answer)."""


class HttpOracle:
    """``POST /v1/predict`` in batches, waiting out 429s (``Retry-After``) up to a limit.

    Counts the rows it asked (``asked``) and the seconds it waited on limits (``waited``).
    """

    def __init__(
        self, url: str, token: str, *, batch: int = 64, max_wait_s: float = 120.0,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:  # fmt: skip
        import httpx

        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url {url!r}: an http:// or https:// URL of a gateway")
        self.url = url.rstrip("/")
        self._client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.batch = batch
        self.max_wait_s = max_wait_s
        self.progress = progress
        self.asked = 0
        self.waited = 0.0

    def describe(self) -> dict[str, Any]:
        """``GET /v1/model``: features, classes, version."""
        return self._json(self._call("GET", "/v1/model"))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(rows), self.batch):
            part = np.asarray(rows[start : start + self.batch], dtype=np.float64)
            answer = self._json(self._call("POST", "/v1/predict", json={"inputs": part.tolist()}))
            labels = answer.get("labels")
            if not isinstance(labels, list) or len(labels) != len(part):
                raise OracleError(f"{self.url}: the answer holds no label per row")
            out.extend(int(v) for v in labels)
            self.asked += len(part)
        return np.asarray(out, dtype=np.int64)

    def _call(self, method: str, path: str, **kwargs):
        import httpx

        while True:
            try:
                response = self._client.request(method, self.url + path, **kwargs)
            except httpx.HTTPError as exc:
                raise OracleError(f"{self.url}{path}: {exc}") from None
            if response.status_code != 429:
                break
            wait = float(response.headers.get("Retry-After", "1") or 1)
            if self.waited + wait > self.max_wait_s:
                raise OracleError(f"{self.url}: rate-limited for over {self.max_wait_s:g} s")
            self.progress(f"rate-limited: waiting {wait:g} s (asked {self.asked} rows so far)")
            time.sleep(wait)
            self.waited += wait
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise OracleError(f"{self.url}{path}: {response.status_code} {str(detail)[:200]}")
        return response

    def _json(self, response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise OracleError(f"{self.url}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise OracleError(f"{self.url}: the answer is not a JSON object")
        return data

    def close(self) -> None:
        self._client.close()


def suspect_predictor(suspect: str, *, token: str | None = None) -> tuple[Predictor, str]:
    """A predictor for ``suspect`` and what it is (``http``, ``surrogate``, ``checkpoint``).

    Raises:
        UsageError: Not a URL, a surrogate directory or an Aegis checkpoint directory;
            a URL without a token.
        RefusedError: ``checkpoint``: a checkpoint directory that does not load.
    """
    if suspect.startswith(("http://", "https://")):
        if not token:
            raise UsageError("an http:// suspect needs --token (a client of that gateway)")
        return HttpOracle(suspect, token), "http"
    from aegis.attack.surrogate import META, SurrogateError, load_surrogate

    path = Path(suspect)
    if not path.is_dir():
        raise UsageError(f"{suspect}: neither an http:// URL nor a model directory")
    if (path / META).exists():
        try:
            return load_surrogate(path).predict, "surrogate"
        except SurrogateError as exc:
            raise UsageError(str(exc)) from None
    if not (path / "config.json").exists() and (path / "model" / "config.json").exists():
        path = path / "model"  # a release or an export: its checkpoint
    if (path / "config.json").exists():
        from aegis.train.checkpoint import load_checkpoint

        loaded = load_checkpoint(path)
        return model_predictor(loaded.model, loaded.spec), "checkpoint"
    raise UsageError(f"{suspect}: no surrogate.json or config.json (not a model directory)")


def model_predictor(model, spec) -> Predictor:
    """``rows -> labels`` of a pipeline model, through its own preprocessing (``spec``)."""
    import torch

    from aegis.serve.served import model_inputs

    def predict(rows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(model_inputs(np.asarray(rows, dtype=np.float64), spec))
        with torch.no_grad():
            return model(x).argmax(dim=1).numpy()

    return predict
