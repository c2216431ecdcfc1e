"""The evaluation's attack jobs as Prefect tasks, on the task runner ``params.yaml`` names.

``run.task_runner`` decides where the jobs of ``aegis.evaluate.jobs`` (one per
independent attack, one per ε of the PGD sweep) run when a flow evaluates:

- ``threads`` (the default): Prefect's thread pool in the flow's process;
- ``dask``: prefect-dask's ``DaskTaskRunner``, on a local cluster of
  ``run.dask_workers`` worker processes of one thread each, started for the
  evaluation and closed after it, or on the existing cluster at ``run.dask_address``.

A task runner belongs to a flow run, and the retrain flow's own steps run one
after the other, so each evaluation's jobs are the tasks of a nested flow run
(``evaluate-attacks``) with the configured runner. The figures are the same on
every runner (see ``aegis.evaluate.jobs``). prefect-dask and distributed are
imported only when Dask is configured (``pip install 'aegis[dask]'``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from aegis.config import RunParams
from aegis.errors import ConfigError
from aegis.evaluate.art_import import import_art
from aegis.evaluate.jobs import AttackJob, JobResult, MapJobs, run_job
from tasks.heartbeats import short_run

# How long a scheduler at run.dask_address has to answer before the run is refused: a
# reachable scheduler answers in milliseconds, and Dask's own default (30 s) would hold a
# misconfigured run for half a minute.
CONNECT_TIMEOUT_S = 5.0


def _import_prefect_dask():
    try:
        import prefect_dask
    except ImportError as exc:
        raise ConfigError(
            "run.task_runner: dask needs prefect-dask (pip install 'aegis[dask]')"
        ) from exc
    return prefect_dask


async def _identity(address: str, timeout: float) -> dict[str, Any]:
    from distributed.core import rpc

    async with rpc(address, timeout=timeout) as scheduler:
        return await asyncio.wait_for(scheduler.identity(), timeout)


def _run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run``, also from a thread whose event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_dask_address(address: str, *, timeout: float | None = None) -> None:
    """Refuses a ``run.dask_address`` where no Dask scheduler answers.

    Args:
        address: The scheduler address, e.g. ``tcp://10.0.0.5:8786``.
        timeout: Seconds it has to answer; default :data:`CONNECT_TIMEOUT_S`.

    Raises:
        ConfigError: Not a Dask address, nothing answers in time, or what answers
            is not a scheduler.
    """
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        identity = _run_coroutine(_identity(address, timeout))
    except ValueError as exc:  # distributed's parse errors: no port, unknown scheme
        raise ConfigError(f"run.dask_address: {address!r} is not a Dask address ({exc})") from exc
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"run.dask_address: no Dask scheduler answers at {address} within {timeout:g} s"
        ) from exc
    if identity.get("type") != "Scheduler":
        raise ConfigError(
            f"run.dask_address: {address} is a Dask {identity.get('type')}, not a scheduler"
        )


def check_task_runner(run: RunParams) -> None:
    """Checks now what would fail the evaluation later: prefect-dask, and the cluster.

    Raises:
        ConfigError: Dask is configured but prefect-dask is missing, or no scheduler
            answers at ``run.dask_address``.
    """
    if run.task_runner != "dask":
        return
    _import_prefect_dask()
    if run.dask_address:
        check_dask_address(run.dask_address)


def task_runner_for(run: RunParams) -> TaskRunner:
    """A new task runner as ``run`` configures it (a runner instance serves one flow run).

    Raises:
        ConfigError: Dask is configured but prefect-dask is missing.
    """
    if run.task_runner == "threads":
        # Jobs are pinned to one torch thread each, so one job per usable core.
        return ThreadPoolTaskRunner(max_workers=_usable_cores())
    dask_runner = _import_prefect_dask().DaskTaskRunner
    if run.dask_address:
        return dask_runner(address=run.dask_address)
    return dask_runner(
        cluster_class=local_cluster,
        # Processes of one thread: the attacks are Python loops over tiny batches, which a
        # second thread of the same process would serialise on the GIL.
        cluster_kwargs={"n_workers": run.dask_workers, "processes": True, "threads_per_worker": 1},
    )


def local_cluster(**kwargs: Any):
    """A ``distributed.LocalCluster`` tuned for the attack jobs (``DaskTaskRunner``'s class).

    Dask spawns its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (memory handed back to
    the OS early, for long-lived workers); torch's many small allocations then cost the
    attacks a third more time (APGD-T 2.85 s against 2.15 s here). A cluster that lives
    for one evaluation has no use for it, so its workers keep glibc's default.

    Args:
        **kwargs: ``LocalCluster`` arguments.
    """
    import dask
    from distributed import LocalCluster

    # The scheduler, the nannies and the workers log every start and stop at INFO; under
    # `aegis run` that reaches the command's stderr through Prefect's handlers. Warnings
    # and errors still show (the workers read the level from their environment).
    logging.getLogger("distributed").setLevel(logging.WARNING)
    # Its HTTP server starts even without a dashboard: on a free port, never a fixed one
    # (8787) that another run's cluster may hold.
    kwargs.setdefault("dashboard_address", ":0")
    spawn_env = "distributed.nanny.pre-spawn-environ"
    with dask.config.set(
        {
            f"{spawn_env}.MALLOC_TRIM_THRESHOLD_": None,
            f"{spawn_env}.DASK_LOGGING__DISTRIBUTED": "warning",
        }
    ):
        return LocalCluster(**kwargs)


@contextmanager
def _api_url_for_workers() -> Iterator[None]:
    """Tells worker processes this flow's Prefect API when it is an in-process server.

    With no ``PREFECT_API_URL`` set, Prefect serves an ephemeral API from this process
    and its settings name none; a Dask worker given those settings would start an
    ephemeral server of its own (tens of seconds, and task runs recorded elsewhere).
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    context = FlowRunContext.get()
    if PREFECT_API_URL.value() or context is None or context.client is None:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: str(context.client.api_url)}):
        yield


@task(name="attack", cache_policy=NO_CACHE)
def attack_task(job: AttackJob) -> JobResult:
    """One attack job (``aegis.evaluate.jobs.run_job``) as a Prefect task."""
    return run_job(job)


@flow(name="evaluate-attacks", validate_parameters=False)
def evaluate_attacks(jobs: list[AttackJob]) -> list[JobResult]:
    """Submits every job as a task on this flow run's task runner; results in job order."""
    with _api_url_for_workers():
        futures = [attack_task.with_options(task_run_name=job.label).submit(job) for job in jobs]
        return [future.result() for future in futures]


def map_jobs_on(run: RunParams) -> MapJobs:
    """A ``map_jobs`` that runs the jobs as tasks of a nested flow on ``run``'s runner.

    Args:
        run: The ``run`` section of params (``task_runner``, ``dask_address``,
            ``dask_workers``).

    Returns:
        A callable for ``assess_robustness(map_jobs=...)``; each call checks the
        runner, then runs one ``evaluate-attacks`` flow run (a local Dask cluster
        lives as long as that flow run).
    """

    def map_jobs(jobs: Sequence[AttackJob]) -> list[JobResult]:
        check_task_runner(run)
        import_art()  # before any thread imports it (ART's circular imports race)
        subflow = evaluate_attacks.with_options(task_runner=task_runner_for(run))
        # Its parent, the evaluation's run, keeps its heartbeat. On threads the jobs take
        # seconds; a Dask cluster may hold them for minutes, and keeps Prefect's setting.
        lasts_s = 0.0 if run.task_runner == "threads" else math.inf
        with short_run(lasts_s=lasts_s):
            return subflow(list(jobs))

    return map_jobs
