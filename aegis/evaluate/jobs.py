"""The robustness evaluation's independent attack runs as picklable jobs.

``assess_robustness`` cuts its work into coarse jobs, one per independent attack and one
per ε of the PGD sweep, and hands the list to a ``map_jobs`` callable: by default
:func:`run_serially` in this process; in a Prefect flow, ``tasks.evaluate_jobs`` runs each
as a task on the configured task runner (threads, or Dask worker processes).

A job's result must not depend on where, when or beside what it runs:

- each job carries its own seed, a function of the evaluation seed and the attack's name
  (:func:`attack_seed`), never of the order the jobs run in;
- each runs with exactly one torch thread (the thread count changes floating-point
  reduction order, hence results), in every mode;
- each works on its own copy of the model, so jobs sharing a process share no module
  state (ART's ``backward()`` writes parameter gradients);
- ART's attacks draw from the process-global RNGs (``attacks.seeded_global_rngs``), which
  serialises them within a process.

Jobs travel by pickle (Dask): the model as a module (its class by reference, weights by
value), the samples as numpy arrays. A Dask cluster is trusted like the host it runs on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from aegis.config import EvaluateParams
from aegis.evaluate import attacks
from aegis.evaluate.attacks import Domain

# Offsets of each attack's seed from the evaluation seed, so attacks never share random
# draws. The sweep's PGD runs share one seed: the same random starts, scaled by each ε.
SEED_OFFSETS = {"pgd": 0, "apgd-ce": 1, "apgd-t": 2, "square": 3}


def attack_seed(seed: int, attack: str) -> int:
    """The seed of ``attack``'s random draws in an evaluation seeded with ``seed``."""
    return seed + SEED_OFFSETS[attack]


@dataclass(frozen=True, eq=False)  # identity: arrays have no truth value to compare by
class JobInputs:
    """What every job of one evaluation attacks: the model and the samples.

    Attributes:
        model: A classifier returning logits, in eval mode (each job copies it).
        x: The attacked inputs, float32.
        y: Their labels, int64.
        domain: ``(min, max)`` of valid inputs, or ``None``.
    """

    model: nn.Module = field(repr=False)
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    domain: Domain


@dataclass(frozen=True, eq=False)
class AttackJob:
    """One attack at one ε: everything needed to run it anywhere.

    Attributes:
        attack: ``pgd``, ``apgd-ce``, ``apgd-t`` or ``square``.
        eps: L-inf radius.
        seed: This job's seed (:func:`attack_seed`).
        params: The attack budgets (``evaluate`` section of params).
        inputs: The model and samples (shared by the evaluation's jobs).
    """

    attack: str
    eps: float
    seed: int
    params: EvaluateParams
    inputs: JobInputs

    @property
    def label(self) -> str:
        """``<attack>@<eps>``, e.g. ``pgd@0.05``: the job's task name."""
        return f"{self.attack}@{self.eps:g}"


@dataclass(frozen=True, eq=False)
class JobResult:
    """What a job returns.

    Attributes:
        attack: The job's attack.
        eps: The job's ε.
        correct: Per-sample correctness under the attack.
        seconds: Wall-clock run time of the attack (where it ran).
    """

    attack: str
    eps: float
    correct: np.ndarray = field(repr=False)
    seconds: float


MapJobs = Callable[[Sequence[AttackJob]], list[JobResult]]
"""Runs every job (anywhere, in any order) and returns their results in the jobs' order."""


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Runs torch with ``n`` threads in the calling thread, then restores that thread's count.

    Torch's thread count (OpenMP's) belongs to each thread: a job sets its own, in the
    thread it runs in, so jobs running beside it on a thread pool are not touched, and
    the pool's threads do not inherit the count the caller happened to have.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _correct(job: AttackJob, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    p, common = job.params, {"eps": job.eps, "domain": job.inputs.domain, "seed": job.seed}
    if job.attack == "pgd":
        return attacks.pgd_correct(
            model, x, y, steps=p.pgd_steps, restarts=p.pgd_restarts, **common
        )
    if job.attack == "apgd-ce":
        return attacks.apgd_ce_correct(model, x, y, steps=p.apgd_steps, **common)
    if job.attack == "apgd-t":
        return attacks.apgd_t_correct(
            model, x, y, steps=p.apgd_steps, targets=p.apgd_targets, **common
        )
    if job.attack == "square":
        k = p.square_samples  # Square is slow: a prefix of the samples only
        return attacks.square_correct(model, x[:k], y[:k], queries=p.square_queries, **common)
    raise ValueError(f"unknown attack {job.attack!r}")


def run_job(job: AttackJob, *, threads: int = 1) -> JobResult:
    """Runs one job on a private copy of the model.

    Args:
        job: The attack, its ε, seed and budgets, and the model and samples.
        threads: Torch threads of the job. The evaluation always uses 1, in every mode
            (results depend on it); another count is for measuring only.

    Returns:
        Per-sample correctness under the attack, and its run time.

    Raises:
        ValueError: The job names an unknown attack.
    """
    with torch_threads(threads):
        model = copy.deepcopy(job.inputs.model).eval()
        x = torch.as_tensor(job.inputs.x, dtype=torch.float32)
        y = torch.as_tensor(job.inputs.y, dtype=torch.long)
        start = time.perf_counter()
        correct = np.asarray(_correct(job, model, x, y), dtype=bool)
        return JobResult(job.attack, job.eps, correct, time.perf_counter() - start)


def run_serially(jobs: Sequence[AttackJob]) -> list[JobResult]:
    """The default ``map_jobs``: every job in this process, one after the other."""
    return [run_job(job) for job in jobs]
