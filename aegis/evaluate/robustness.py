"""Robust accuracy under our PGD and the independent suite, with flags for weak evaluations.

The headline figure is the per-sample worst case: a sample counts as robust only if the
model classifies it correctly without attack and under every attack run on it at the
training eps. Flags name the symptoms of gradient masking or a weak attack:

- ``<attack>_beats_pgd``: an independent gradient attack (APGD-CE, APGD-T) finds more
  adversarial examples than our PGD by more than max(2 points, 2 standard errors);
- ``square_beats_pgd``: black-box Square does (by the same margin), which a white-box
  attack with useful gradients should never allow;
- ``vanishing_gradients``: input gradients are (almost) zero on clean inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from aegis.config import EvaluateParams
from aegis.evaluate import attacks
from aegis.evaluate.attacks import Domain
from aegis.evaluate.gradients import GradientStats, gradient_stats
from aegis.evaluate.jobs import AttackJob, JobInputs, MapJobs, attack_seed, run_serially

MIN_MARGIN = 0.02  # 2 points: below this, attack differences are noise at our sample sizes
_DISPLAY = {"pgd": "PGD", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "square": "Square"}


def binomial_stderr(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` independent samples."""
    return math.sqrt(accuracy * (1 - accuracy) / n) if n > 0 else float("nan")


@dataclass(frozen=True)
class AttackRun:
    """One attack at one eps.

    Attributes:
        name: ``pgd``, ``apgd-ce``, ``apgd-t`` or ``square``.
        eps: L-inf radius.
        correct: Per-sample correctness under attack, over the first ``n`` attacked samples.
        seconds: Wall-clock run time.
    """

    name: str
    eps: float
    correct: np.ndarray = field(repr=False)
    seconds: float

    @property
    def n(self) -> int:
        """Samples attacked."""
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        """Robust accuracy."""
        return float(np.mean(self.correct)) if self.n else float("nan")

    @property
    def stderr(self) -> float:
        """Binomial standard error of ``accuracy``."""
        return binomial_stderr(self.accuracy, self.n)


@dataclass(frozen=True)
class Flag:
    """A reason to distrust the robustness figures.

    Attributes:
        code: Stable identifier, e.g. ``square_beats_pgd``.
        reason: One human-readable sentence with the numbers behind it.
    """

    code: str
    reason: str


@dataclass(frozen=True)
class RobustnessReport:
    """Robust accuracies on the first ``n`` test samples, and the flags they raise.

    Attributes:
        eps: The training eps, at which every attack runs.
        clean: Per-sample clean correctness on the attacked samples.
        pgd: Our PGD at ``eps``.
        sweep: Our PGD at each eps of the sweep (``eps`` included), ascending.
        independent: The independent attacks run at ``eps``, by name.
        skipped: Requested attacks that could not run, with the reason.
        gradients: Input-gradient statistics on the clean attacked samples.
        flags: Reasons to distrust the figures (empty when none).
    """

    eps: float
    clean: np.ndarray = field(repr=False)
    pgd: AttackRun
    sweep: dict[float, AttackRun]
    independent: dict[str, AttackRun]
    skipped: dict[str, str]
    gradients: GradientStats
    flags: list[Flag]

    @property
    def n(self) -> int:
        """Samples attacked (Square may attack fewer; see its run)."""
        return len(self.clean)

    @property
    def clean_accuracy(self) -> float:
        """Clean accuracy on the attacked samples."""
        return float(np.mean(self.clean))

    @property
    def worst_case_correct(self) -> np.ndarray:
        """Per sample: correct without attack and under every attack run on it at ``eps``.

        Square runs on a prefix of the samples; the rest are judged by the other attacks.
        """
        worst = self.clean & self.pgd.correct
        for run in self.independent.values():
            worst[: run.n] &= run.correct
        return worst

    @property
    def worst_case(self) -> float:
        """The headline robust accuracy."""
        return float(np.mean(self.worst_case_correct))

    @property
    def worst_case_stderr(self) -> float:
        """Binomial standard error of ``worst_case``."""
        return binomial_stderr(self.worst_case, self.n)


def compare_to_pgd(pgd: AttackRun, other: AttackRun) -> Flag | None:
    """Flags ``other`` when it beats our PGD on the same samples by more than the margin.

    The margin is max(2 points, 2 binomial standard errors of PGD's accuracy on the
    samples ``other`` attacked, which are a prefix of PGD's).
    """
    pgd_acc = float(np.mean(pgd.correct[: other.n]))
    margin = max(MIN_MARGIN, 2 * binomial_stderr(pgd_acc, other.n))
    gap = pgd_acc - other.accuracy
    if gap <= margin:
        return None
    label = _DISPLAY.get(other.name, other.name)
    why = (
        "black-box Square beats white-box PGD, the signature of gradient masking"
        if other.name == "square"
        else f"{label} beats our PGD, which is too weak to trust"
    )
    return Flag(
        f"{other.name}_beats_pgd",
        f"{why}: {label} robust accuracy {other.accuracy:.3f} vs PGD {pgd_acc:.3f} on the same "
        f"{other.n} samples at eps={other.eps:g} (gap {gap * 100:.1f} points > margin "
        f"{margin * 100:.1f} = max(2 points, 2 standard errors))",
    )


def _jobs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    domain: Domain,
    params: EvaluateParams,
    seed: int,
) -> tuple[list[AttackJob], dict[str, str]]:
    """The evaluation's jobs, and the requested attacks skipped (with the reason).

    The independent attacks come first: they are the longest jobs, and a runner that
    starts the longest first balances its workers best (results never depend on order).
    """
    inputs = JobInputs(model, x.numpy(), y.numpy(), domain)
    nb_classes = attacks.predict_logits(model, x[:1]).shape[1]
    jobs: list[AttackJob] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(params.independent):  # de-duplicated, order kept
        if name == "apgd-t" and nb_classes < 3:
            skipped[name] = f"needs at least 3 classes (DLR loss), the model has {nb_classes}"
            continue
        jobs.append(AttackJob(name, eps, attack_seed(seed, name), params, inputs))
    for e in sorted({*params.epsilons, eps}):  # the sweep; its run at eps is our PGD's
        jobs.append(AttackJob("pgd", e, attack_seed(seed, "pgd"), params, inputs))
    return jobs, skipped


def assess_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    domain: Domain,
    params: EvaluateParams,
    seed: int,
    map_jobs: MapJobs | None = None,
) -> RobustnessReport:
    """Runs our PGD (at ``eps`` and the sweep) and the independent suite, then sets flags.

    Each attack, and our PGD at each eps of the sweep, is one independent job
    (``aegis.evaluate.jobs``); ``map_jobs`` decides where they run. Results do not
    depend on it: every job is seeded by its attack's name and runs with one torch thread.

    Args:
        model: A classifier returning logits, in eval mode.
        x: Test inputs; the first ``params.max_samples`` are attacked.
        y: Test labels.
        eps: The training eps (> 0).
        domain: ``(min, max)`` of valid inputs, or ``None``.
        params: Attack budgets and the suite (``evaluate`` section of params).
        seed: Seed of every attack's random draws.
        map_jobs: Runs the jobs and returns their results in order; default
            :func:`aegis.evaluate.jobs.run_serially` (in this process).

    Returns:
        The report; Square's run covers the first ``params.square_samples`` samples only.

    Raises:
        RuntimeError: ``map_jobs`` returned results that do not match the jobs.
    """
    x = torch.as_tensor(x, dtype=torch.float32)[: params.max_samples]
    y = torch.as_tensor(y, dtype=torch.long)[: params.max_samples]
    clean = attacks.predict_correct(model, x, y)
    jobs, skipped = _jobs(model, x, y, eps=eps, domain=domain, params=params, seed=seed)
    results = (map_jobs or run_serially)(jobs)
    if len(results) != len(jobs) or any(
        (r.attack, r.eps) != (j.attack, j.eps) for r, j in zip(results, jobs, strict=False)
    ):
        raise RuntimeError("map_jobs: results do not match the jobs (one each, in order)")
    runs = [AttackRun(r.attack, r.eps, r.correct, r.seconds) for r in results]
    sweep = {run.eps: run for run in sorted(runs, key=lambda r: r.eps) if run.name == "pgd"}
    pgd = sweep[eps]
    independent = {run.name: run for run in runs if run.name != "pgd"}

    grads = gradient_stats(model, x, y)
    flags = [f for run in independent.values() if (f := compare_to_pgd(pgd, run)) is not None]
    if grads.vanishing:
        flags.append(Flag("vanishing_gradients", grads.reason()))
    return RobustnessReport(eps, clean, pgd, sweep, independent, skipped, grads, flags)
