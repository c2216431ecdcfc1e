"""A workspace with two signed releases, built once per session (importable as ``release_helpers``).

``build_released(template, base)`` copies the session template, ingests and
validates the signed digits, trains and evaluates (FAST_PARAMS), builds
release v1, changes ``train.seed``, trains and evaluates again and builds v2.
It also adds two approver keys. ``copy_released(base, dst)`` gives a test its
own copy (``shutil.copytree(symlinks=True)``: milliseconds).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers import Env, env_at

MODEL = "digits-model"
V1 = f"{MODEL}@v1.0.0"
V2 = f"{MODEL}@v2.0.0"


@dataclass(frozen=True)
class ReleasedEnv(Env):
    """An ``Env`` (root, supplier_key, operator_key, dataset, raw) plus two releases.

    Attributes:
        approver_key: Approver ``bob`` (trust name ``approver-bob``, owner ``bob``).
        approver2_key: Approver ``carol`` (trust name ``approver-carol``, owner ``carol``).
        operator_key: (from Env) operator ``ops``, owner ``alice``.
        v1, v2: Release targets ``digits-model@v1.0.0`` and ``digits-model@v2.0.0``;
            v2 was trained with ``train.seed: 1`` (a different model digest).
        model: The registry name, ``digits-model``.
    """

    approver_key: Path = Path()
    approver2_key: Path = Path()
    v1: str = V1
    v2: str = V2
    model: str = MODEL

    @property
    def keys(self) -> dict[str, Path]:
        """Private keys by role: operator (alice), approver (bob), approver2 (carol), supplier."""
        return {
            "operator": self.operator_key,
            "approver": self.approver_key,
            "approver2": self.approver2_key,
            "supplier": self.supplier_key,
        }

    def release_dir(self, version: int) -> Path:
        """``releases/digits-model/v<version>`` in this workspace."""
        return self.root / "releases" / MODEL / f"v{version}"


def released_at(base: Path) -> ReleasedEnv:
    keys = base / "keys"
    return ReleasedEnv(
        **vars(env_at(base)),
        approver_key=keys / "approver-bob.pem",
        approver2_key=keys / "approver-carol.pem",
    )


def train_evaluate_release(ws, name: str = "digits"):
    """Train and evaluate stages (recorded like the flow does), then ``build_release``."""
    from aegis.ledger import Ledger
    from aegis.pipeline.evaluate import evaluate_stored, record_evaluation
    from aegis.pipeline.train import record_training, train_stage
    from aegis.registry.release import build_release

    ledger = Ledger.load(ws)
    actor, _ = ledger.actor(None)
    record_training(ledger, train_stage(ledger, name, actor=actor))
    record_evaluation(ledger, evaluate_stored(ledger, name, actor=actor))
    return build_release(ledger, name, actor=actor)


def build_released(template: Path, base: Path) -> ReleasedEnv:
    """Builds the released workspace under ``base`` from the template env directory."""
    from aegis import vcs
    from aegis.config import override_params
    from aegis.data.ingest import ingest
    from aegis.pipeline.validate import record_validation, validate_dataset
    from aegis.trust_ops import new_key

    shutil.copytree(template, base, symlinks=True)
    env = released_at(base)
    ws = env.ws
    for owner, path in (("bob", env.approver_key), ("carol", env.approver2_key)):
        new_key(
            ws, role="approver", name=f"approver-{owner}", owner=owner, out=path,
            admin_key=env.admin_key,
        )  # fmt: skip
    ledger = env.ledger()
    actor, _ = ledger.actor(None)
    ingest(ledger, str(env.dataset), name="digits", actor=actor)
    record_validation(ledger, validate_dataset(ledger, "digits", actor=actor))
    first = train_evaluate_release(ws)
    override_params(ws.params_path, {"train": {"seed": 1}})
    vcs.commit_paths(ws.root, "test: train.seed 1", ["params.yaml"])
    second = train_evaluate_release(ws)
    assert (first.tag, second.tag) == (V1, V2), (first, second)
    return env


def copy_released(base: Path, dst: Path) -> ReleasedEnv:
    shutil.copytree(base, dst, symlinks=True)
    return released_at(dst)
