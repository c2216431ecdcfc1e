"""Prefect tasks of the retrain run: each :class:`aegis.pipeline.retrain.Step` as a task.

The core decides the steps and their order; this module only gives each one
a Prefect task (its name in the UI, and retries on transient I/O errors for
the I/O steps, never on a refusal).
"""

from __future__ import annotations

from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from aegis.errors import TransientIOError
from aegis.ledger import Ledger
from aegis.pipeline.evaluate import attack_jobs_mapped_by
from aegis.pipeline.retrain import Step


def retry_on_io_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient I/O errors, never a refusal."""
    try:
        state.result()
    except TransientIOError:
        return True
    except Exception:
        return False
    return False


def task_of(step: Step, ledger: Ledger) -> Task:
    """The Prefect task of ``step``: its name, and I/O retries from ``params.yaml`` if I/O."""
    options: dict[str, Any] = {"name": step.name, "cache_policy": NO_CACHE}
    if step.io:
        params = ledger.ws.params().ingest
        options |= {
            "retries": params.io_retries,
            "retry_delay_seconds": params.io_retry_delay_s,
            "retry_condition_fn": retry_on_io_only,
        }
    return task(step.fn, **options)


def as_task(step: Step, ledger: Ledger, *args: Any) -> Any:
    """Runs ``step`` as a Prefect task of the current flow run."""
    return task_of(step, ledger)(ledger, *args)


def as_task_on_runner(step: Step, ledger: Ledger, *args: Any) -> Any:
    """:func:`as_task`; the evaluate step runs its attack jobs on ``run.task_runner``.

    The jobs become the tasks of a nested flow run with the configured task runner
    (``tasks.evaluate_jobs``); every other step is exactly :func:`as_task`.
    """
    from aegis.pipeline.retrain import EVALUATE

    if step is not EVALUATE:
        return as_task(step, ledger, *args)
    from tasks.evaluate_jobs import map_jobs_on  # imports torch: only when evaluating

    def evaluate_on_runner(ledger: Ledger, *args: Any) -> Any:
        # Installed inside the task, so the jobs see it in whatever thread the task runs.
        with attack_jobs_mapped_by(map_jobs_on(ledger.ws.params().run)):
            return step.fn(ledger, *args)

    return as_task(Step(step.name, evaluate_on_runner, step.io), ledger, *args)
