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
