"""The attacker's copies of a model: four families, saved without pickle.

A surrogate learns from rows in the victim's dataset units and the labels the victim
served. It standardizes its inputs itself (the attacker does not know the victim's
preprocessing). Every family saves to a directory holding ``surrogate.json`` (family,
classes, standardization) and ``surrogate.safetensors`` (tensors only), so loading one
executes nothing: the MLP and CNN as torch weights, logistic regression as its
coefficients, a random forest as each tree's node arrays, evaluated here in numpy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FAMILIES = ("mlp", "cnn", "logreg", "forest")
FORMAT = "aegis-surrogate/1"
META = "surrogate.json"
WEIGHTS = "surrogate.safetensors"


class SurrogateError(ValueError):
    """A surrogate directory that is not one (missing, malformed, another format)."""


@dataclass
class Surrogate:
    """A fitted copy: ``predict(rows) -> labels``; ``save(dir)`` / :func:`load_surrogate`."""

    family: str
    classes: int
    mean: np.ndarray
    std: np.ndarray
    tensors: dict[str, np.ndarray]
    shape: tuple[int, ...] = ()  # the CNN's (1, h, w)

    def _z(self, rows: np.ndarray) -> np.ndarray:
        return ((np.asarray(rows, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        z = self._z(rows)
        if self.family == "logreg":
            logits = z @ self.tensors["coef"].T + self.tensors["intercept"]
            if logits.shape[1] == 1:  # scikit-learn's binary form: one column
                return (logits[:, 0] > 0).astype(np.int64)
            return logits.argmax(axis=1)
        if self.family == "forest":
            return _forest_proba(self.tensors, z).argmax(axis=1)
        import torch

        net = _net(self.family, self.classes, z.shape[1], self.shape)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.tensors.items()})
        net.eval()
        x = torch.from_numpy(z)
        if self.family == "cnn":
            x = x.reshape(len(z), *self.shape)
        with torch.no_grad():
            return net(x).argmax(dim=1).numpy()

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {**self.tensors, "_mean": self.mean, "_std": self.std}
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                  str(directory / WEIGHTS))  # fmt: skip
        meta = {"format": FORMAT, "family": self.family, "classes": self.classes,
                "shape": list(self.shape)}  # fmt: skip
        (directory / META).write_text(json.dumps(meta, indent=1) + "\n")


def load_surrogate(directory: Path) -> Surrogate:
    """Reads a surrogate directory (tensors and JSON only).

    Raises:
        SurrogateError: Not a surrogate directory, or malformed.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from aegis.errors import UnsafeFileError
    from aegis.fileutil import is_regular, read_regular

    try:
        meta = json.loads(read_regular(directory / META, limit=1 << 16, what=META))
        if not is_regular(directory / WEIGHTS):
            raise ValueError(f"{WEIGHTS} is missing or not a regular file")
        tensors = load_file(str(directory / WEIGHTS))
    except (OSError, ValueError, SafetensorError, UnsafeFileError) as exc:
        raise SurrogateError(f"{directory}: not a surrogate ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SurrogateError(f"{directory}: {META} is not {FORMAT}")
    family, classes = meta.get("family"), meta.get("classes")
    if family not in FAMILIES or not isinstance(classes, int) or classes < 2:
        raise SurrogateError(f"{directory}: unknown family or classes in {META}")
    try:
        mean, std = tensors.pop("_mean"), tensors.pop("_std")
    except KeyError:
        raise SurrogateError(f"{directory}: {WEIGHTS} lacks its standardization") from None
    shape = tuple(int(v) for v in meta.get("shape") or ())
    return Surrogate(family, classes, mean, std, tensors, shape)


def image_side(features: int) -> int | None:
    side = math.isqrt(features)
    return side if side * side == features else None


def fit_surrogate(
    family: str, rows: np.ndarray, labels: np.ndarray, *, classes: int, seed: int = 0
) -> Surrogate:
    """Trains ``family`` on ``rows`` (dataset units) and the victim's ``labels``.

    Raises:
        ValueError: Unknown family, or ``cnn`` on rows that are not square images.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown surrogate family '{family}' (one of {', '.join(FAMILIES)})")
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=0)
    std = np.where(rows.std(axis=0) > 1e-8, rows.std(axis=0), 1.0)
    out = Surrogate(family, classes, mean, std, {})
    z = out._z(rows)
    if family == "logreg":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(max_iter=2000, C=1.0).fit(z, labels)
        out.tensors = _padded_linear(model, classes)
    elif family == "forest":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=100, random_state=seed).fit(z, labels)
        out.tensors = _forest_tensors(model, classes)
    else:
        if family == "cnn":
            side = image_side(rows.shape[1])
            if side is None:
                raise ValueError("a cnn surrogate needs square images")
            out.shape = (1, side, side)
        out.tensors = _train_net(family, z, labels, classes, out.shape, seed)
    return out


def _padded_linear(model, classes: int) -> dict[str, np.ndarray]:
    """Coefficients for every class (a class the victim never answered gets -inf)."""
    coef, intercept = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
    if len(model.classes_) == 2 and classes == 2:
        return {"coef": coef, "intercept": intercept}
    full_c = np.zeros((classes, coef.shape[1]), dtype=np.float32)
    full_i = np.full(classes, -1e30, dtype=np.float32)
    if len(model.classes_) == 2:  # two classes seen of more
        coef = np.vstack([-coef, coef]) / 2
        intercept = np.array([-intercept[0], intercept[0]]) / 2
    for j, c in enumerate(model.classes_):
        full_c[int(c)], full_i[int(c)] = coef[j], intercept[j]
    return {"coef": full_c, "intercept": full_i}


def _forest_tensors(model, classes: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t, tree in enumerate(model.estimators_):
        st = tree.tree_
        value = st.value[:, 0, :]
        value = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-12)
        full = np.zeros((len(value), classes), dtype=np.float32)
        full[:, model.classes_.astype(int)] = value
        out[f"t{t}.left"] = st.children_left.astype(np.int32)
        out[f"t{t}.right"] = st.children_right.astype(np.int32)
        out[f"t{t}.feature"] = st.feature.astype(np.int32)
        out[f"t{t}.threshold"] = st.threshold.astype(np.float32)
        out[f"t{t}.value"] = full
    return out


def _forest_proba(tensors: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    trees = sorted({k.split(".")[0] for k in tensors})
    total = None
    rows = np.arange(len(z))
    for t in trees:
        left, right = tensors[f"{t}.left"], tensors[f"{t}.right"]
        feature, threshold = tensors[f"{t}.feature"], tensors[f"{t}.threshold"]
        node = np.zeros(len(z), dtype=np.int64)
        for _ in range(len(left)):  # bounded by the node count: a malformed tree cannot loop
            inner = left[node] >= 0
            if not inner.any():
                break
            go_left = z[rows, np.maximum(feature[node], 0)] <= threshold[node]
            node = np.where(inner, np.where(go_left, left[node], right[node]), node)
        proba = tensors[f"{t}.value"][node]
        total = proba if total is None else total + proba
    return total


def _net(family: str, classes: int, features: int, shape: tuple[int, ...]):
    from torch import nn

    if family == "cnn":
        side = shape[1]
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * (side // 2) ** 2, 128), nn.ReLU(), nn.Linear(128, classes),
        )  # fmt: skip
    return nn.Sequential(
        nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, classes),
    )  # fmt: skip


def _train_net(family, z, labels, classes, shape, seed, steps: int = 1500) -> dict[str, Any]:
    """Adam, about ``steps`` batches of 64 (20 to 200 passes): a second or two."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _net(family, classes, z.shape[1], shape)
        x = torch.from_numpy(z)
        if family == "cnn":
            x = x.reshape(len(z), *shape)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        batches = -(-len(x) // 64)
        for _ in range(min(max(steps // batches, 20), 200)):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def gradient_signs(surrogate: Surrogate, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """sign(d logit_label / d row) of a torch surrogate, in dataset-unit directions."""
    import torch

    net = _net(surrogate.family, surrogate.classes, rows.shape[1], surrogate.shape)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in surrogate.tensors.items()})
    x = torch.from_numpy(surrogate._z(rows)).requires_grad_(True)
    inp = x.reshape(len(rows), *surrogate.shape) if surrogate.family == "cnn" else x
    logits = net(inp)
    logits.gather(1, torch.from_numpy(labels.astype(np.int64))[:, None]).sum().backward()
    return np.sign(x.grad.numpy()).astype(np.float64)  # std > 0: the sign is unchanged
