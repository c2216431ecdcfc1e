"""The robustness evaluation as independent jobs: the same figures wherever they run.

Jobs are pickled, reordered and run on a thread pool here, with the digits CNN of the
package's fixtures and tiny budgets; the Prefect and Dask runners are tested in
``tests/flows/test_evaluate_jobs.py``.
"""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from aegis.config import EvaluateParams
from aegis.evaluate import jobs as jobs_module
from aegis.evaluate.jobs import AttackJob, JobResult, attack_seed, run_job, torch_threads
from aegis.evaluate.robustness import RobustnessReport, assess_robustness

TINY = EvaluateParams(
    max_samples=40,
    pgd_steps=3,
    epsilons=[0.05, 0.1, 0.2],
    independent=["apgd-ce", "apgd-t", "square"],
    apgd_steps=3,
    apgd_targets=2,
    square_samples=15,
    square_queries=15,
)


def per_sample(report: RobustnessReport) -> dict[str, list[bool]]:
    """Every run's per-sample correctness, by ``<attack>@<eps>``."""
    runs = [*report.sweep.values(), *report.independent.values()]
    return {f"{r.name}@{r.eps:g}": r.correct.tolist() for r in runs} | {
        "clean": report.clean.tolist()
    }


def _pickled_reversed(jobs: list[AttackJob]) -> list[JobResult]:
    """Each job through pickle (as Dask ships it), run last to first."""
    done = {}
    for i in reversed(range(len(jobs))):
        done[i] = pickle.loads(pickle.dumps(run_job(pickle.loads(pickle.dumps(jobs[i])))))
    return [done[i] for i in range(len(jobs))]


def _on_threads(jobs: list[AttackJob]) -> list[JobResult]:
    """Every job at once on a thread pool in this process (the threads runner's situation)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run_job, jobs))


@pytest.fixture(scope="module")
def serial(digits, undefended, run_eval):
    return run_eval(undefended, digits, TINY)


@pytest.mark.parametrize("map_jobs", [_pickled_reversed, _on_threads], ids=["pickled", "threads"])
def test_mapped_jobs_give_the_serial_figures(digits, undefended, run_eval, serial, map_jobs):
    mapped = run_eval(undefended, digits, TINY, map_jobs=map_jobs)
    assert mapped.to_metrics() == serial.to_metrics()
    assert per_sample(mapped.robustness) == per_sample(serial.robustness)
    r = serial.robustness
    assert 0 < r.pgd.accuracy < r.clean_accuracy  # a real attack: some samples break, some not
    assert set(r.independent) == {"apgd-ce", "apgd-t", "square"}
    assert sorted(r.sweep) == [0.05, 0.1, 0.2]


def test_jobs_run_with_one_torch_thread_whatever_the_caller_uses(
    digits, undefended, run_eval, monkeypatch
):
    seen: list[int] = []
    attack = jobs_module._correct

    def spy(*args):
        seen.append(torch.get_num_threads())  # inside the job, as the attack runs
        return attack(*args)

    monkeypatch.setattr(jobs_module, "_correct", spy)
    figures = {}
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            result = run_eval(undefended, digits, TINY, map_jobs=_on_threads)
            figures[threads] = per_sample(result.robustness)
            assert torch.get_num_threads() == threads  # the caller's count, restored
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    assert figures[2] == figures[1]


def test_each_job_sets_the_thread_count_of_the_thread_it_runs_in():
    # Torch's count is per thread: pool threads made while the caller ran 2 keep 2 unless
    # the job sets its own, and a job must not change the caller's.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            assert list(pool.map(lambda _: torch.get_num_threads(), range(2))) == [2, 2]

            def in_a_job(_):
                with torch_threads(1):
                    return torch.get_num_threads()

            assert list(pool.map(in_a_job, range(4))) == [1, 1, 1, 1]
            assert torch.get_num_threads() == 2
            assert list(pool.map(lambda _: torch.get_num_threads(), range(2))) == [2, 2]
    finally:
        torch.set_num_threads(before)


def test_a_jobs_seed_is_its_attacks_not_its_position(digits, undefended):
    reordered = TINY.model_copy(update={"independent": ["square", "apgd-t", "apgd-ce"]})
    seeds = {}
    for params in (TINY, reordered):
        captured: list[AttackJob] = []

        def capture(jobs, captured=captured):
            captured.extend(jobs)
            return [JobResult(j.attack, j.eps, np.ones(len(j.inputs.y), bool), 0.0) for j in jobs]

        assess_robustness(
            undefended, digits.x_test, digits.y_test, eps=0.1, domain=(0.0, 1.0),
            params=params, seed=7, map_jobs=capture,
        )  # fmt: skip
        seeds[params.independent[0]] = {j.label: j.seed for j in captured}
    assert seeds["apgd-ce"] == seeds["square"]
    assert seeds["apgd-ce"] == {
        "apgd-ce@0.1": 8, "apgd-t@0.1": 9, "square@0.1": 10,
        "pgd@0.05": 7, "pgd@0.1": 7, "pgd@0.2": 7,
    }  # fmt: skip
    assert [attack_seed(7, a) for a in jobs_module.SEED_OFFSETS] == [7, 8, 9, 10]


def test_map_jobs_must_answer_each_job_in_order(digits, undefended):
    def shuffled(jobs):
        return list(reversed(jobs_module.run_serially(jobs)))

    for bad in (lambda jobs: [], shuffled):
        with pytest.raises(RuntimeError, match="one each, in order"):
            assess_robustness(
                undefended, digits.x_test, digits.y_test, eps=0.1, domain=(0.0, 1.0),
                params=TINY.model_copy(update={"independent": ["apgd-ce"]}), seed=0, map_jobs=bad,
            )  # fmt: skip


def test_a_job_leaves_the_callers_model_alone(digits, undefended):
    state = {k: v.clone() for k, v in undefended.state_dict().items()}
    grads = [p.grad for p in undefended.parameters()]  # None: trained with set_to_none
    inputs = jobs_module.JobInputs(
        undefended, digits.x_test[:10].numpy(), digits.y_test[:10].numpy(), (0.0, 1.0)
    )
    run_job(AttackJob("apgd-ce", 0.1, 1, TINY, inputs))  # ART's backward() writes .grad
    assert all(torch.equal(v, undefended.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is g for p, g in zip(undefended.parameters(), grads, strict=True))
    with pytest.raises(ValueError, match="unknown attack"):
        run_job(AttackJob("fgsm", 0.1, 0, TINY, inputs))
