"""The evaluation's attack jobs on Prefect task runners: threads, and a real Dask cluster.

In-process flows against the session's Prefect server; the Dask cluster (2 worker
processes of one thread) is started by the test and closed after it. A tiny MLP on
digits and tiny attack budgets keep the jobs to fractions of a second: what is tested
is that the figures do not depend on where the jobs run.
"""

from __future__ import annotations

import inspect
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import services
import torch
from helpers import snapshot
from sklearn.datasets import load_digits
from torch import nn

import tasks.evaluate_jobs as evaluate_jobs
from aegis import vcs
from aegis.config import EvaluateParams, Params, RunParams, override_params
from aegis.errors import ConfigError
from aegis.evaluate.evaluate import EvaluationResult, evaluate_model
from aegis.pipeline import evaluate as evaluate_stage
from aegis.pipeline.retrain import EVALUATE
from tasks.evaluate_jobs import check_task_runner, map_jobs_on, task_runner_for
from tasks.steps import as_task_on_runner

EPS = 0.05
BUDGETS = EvaluateParams(
    max_samples=40,
    pgd_steps=3,
    epsilons=[0.02, 0.05, 0.1],
    independent=["apgd-ce", "apgd-t", "square"],
    apgd_steps=3,
    apgd_targets=2,
    square_samples=15,
    square_queries=15,
)


pytestmark = [pytest.mark.integration]


def _drain_prefect_workers() -> None:
    """Ships queued logs and events now, while the server still answers (as Prefect's harness)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.drain_all(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


@pytest.fixture(scope="module", autouse=True)
def _prefect_api(prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield
        _drain_prefect_workers()


@pytest.fixture
def spawned_processes_stopped():
    """Stops multiprocessing's resource tracker after the test.

    The first process spawned (a Dask worker) starts it, and it lives until this process
    exits: the session's check for processes left behind would count it.
    """
    yield
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._stop()


@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP fitted to 1000 digits; the other 797 are the test split."""
    bunch = load_digits()
    x = torch.from_numpy((bunch.data / 16.0).astype(np.float32))
    y = torch.from_numpy(bunch.target).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x[:1000]), y[:1000])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), (x[:1000], y[:1000]), (x[1000:], y[1000:])


def _evaluate(digits_mlp, map_jobs=None) -> EvaluationResult:
    model, (x_train, y_train), (x_test, y_test) = digits_mlp
    return evaluate_model(
        model, x_test=x_test, y_test=y_test, x_train=x_train, y_train=y_train,
        domain=(0.0, 1.0), train_eps=EPS, params=BUDGETS, seed=3, map_jobs=map_jobs,
    )  # fmt: skip


def _per_sample(result: EvaluationResult) -> dict[str, list[bool]]:
    r = result.robustness
    return {f"{run.name}@{run.eps:g}": run.correct.tolist() for run in (
        *r.sweep.values(), *r.independent.values())}  # fmt: skip


@pytest.fixture(scope="module")
def serial(digits_mlp) -> EvaluationResult:
    result = _evaluate(digits_mlp)
    r = result.robustness
    assert 0 < r.pgd.accuracy < r.clean_accuracy  # a real attack: some samples break, some not
    return result


def _closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_threads_runner_gives_the_serial_figures(digits_mlp, serial):
    threads = _evaluate(digits_mlp, map_jobs_on(RunParams(task_runner="threads")))
    assert threads.to_metrics() == serial.to_metrics()
    assert _per_sample(threads) == _per_sample(serial)


@pytest.mark.slow
def test_a_dask_cluster_gives_the_threads_figures(digits_mlp, serial, spawned_processes_stopped):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as cluster:
        run = RunParams(task_runner="dask", dask_address=cluster.scheduler_address)
        on_dask = _evaluate(digits_mlp, map_jobs_on(run))
        assert "attack_task" in cluster.scheduler.task_prefixes  # the jobs ran on the cluster
        assert len(cluster.scheduler.workers) == 2
    threads = _evaluate(digits_mlp, map_jobs_on(RunParams()))
    assert on_dask.to_metrics() == threads.to_metrics() == serial.to_metrics()
    assert _per_sample(on_dask) == _per_sample(threads)


def test_an_unreachable_dask_address_is_a_config_error(monkeypatch, digits_mlp):
    monkeypatch.setattr(evaluate_jobs, "CONNECT_TIMEOUT_S", 0.5)
    address = _closed_address()
    run = RunParams(task_runner="dask", dask_address=address)
    attempts = (lambda: check_task_runner(run), lambda: _evaluate(digits_mlp, map_jobs_on(run)))
    for attempt in attempts:
        with pytest.raises(ConfigError) as refused:
            attempt()
        assert refused.value.exit_code == 2
        assert str(refused.value) == (
            f"run.dask_address: no Dask scheduler answers at {address} within 0.5 s"
        )
    for bad, why in (("no-port", "missing port"), ("http://127.0.0.1:8786", "unknown address")):
        with pytest.raises(ConfigError, match=f"'{bad}' is not a Dask address.*{why}"):
            check_task_runner(RunParams(task_runner="dask", dask_address=bad))
    check_task_runner(RunParams(task_runner="threads", dask_address=address))  # not used: fine


def test_aegis_run_refuses_an_unreachable_dask_address_before_it_starts(
    cli, env, monkeypatch, prefect_server
):
    monkeypatch.setattr(evaluate_jobs, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)  # the CLI leaves PREFECT_HOME alone
    address = _closed_address()
    run = {"task_runner": "dask", "dask_address": address}
    override_params(env.root / "params.yaml", {"run": run})
    vcs.commit_paths(env.root, "test: a Dask cluster that is not there", ["params.yaml"])
    before = snapshot(env.root)
    res = cli("--workspace", env.root, "run", "--source", env.dataset, "--name", "digits")
    assert res.code == 2, res.err
    assert res.err.strip().splitlines() == [
        f"error: run.dask_address: no Dask scheduler answers at {address} within 0.5 s"
    ]
    assert snapshot(env.root) == before  # refused before anything was staged or stored


def test_task_runner_for_each_setting():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner_for(RunParams()), ThreadPoolTaskRunner)
    local = task_runner_for(RunParams(task_runner="dask", dask_workers=3))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 3, "processes": True, "threads_per_worker": 1}
    assert local.cluster_class is evaluate_jobs.local_cluster
    remote = task_runner_for(RunParams(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786" and not remote.cluster_kwargs


def test_the_flows_evaluate_step_maps_its_jobs_on_the_configured_runner(
    monkeypatch, digits_mlp, serial
):
    from prefect import flow

    seen = {}

    def evaluate_stored(ledger, name, *, actor):
        seen["map_jobs"] = evaluate_stage._MAP_JOBS.get()
        return _evaluate(digits_mlp, seen["map_jobs"])  # as evaluate_stored passes it on

    monkeypatch.setattr(evaluate_stage, "evaluate_stored", evaluate_stored)
    monkeypatch.setattr(evaluate_stage, "record_evaluation", lambda ledger, evaluated: None)
    ledger = SimpleNamespace(ws=SimpleNamespace(params=lambda: Params()))  # run: threads

    @flow
    def retrain_like():
        return as_task_on_runner(EVALUATE, ledger, "digits", "someone")

    result = retrain_like()
    assert seen["map_jobs"] is not None and seen["map_jobs"].__qualname__.startswith("map_jobs_on")
    assert _per_sample(result) == _per_sample(serial)
    assert evaluate_stage._MAP_JOBS.get() is None  # only for the step's duration


def _heartbeat_runs(api: str, parent_id: str) -> set[str]:
    """The flow runs that sent a heartbeat, once the parent run's heartbeat is stored."""

    def run_ids(events: list[dict]) -> set[str]:
        return {e["resource"]["prefect.resource.id"].removeprefix("prefect.flow-run.")
                for e in events}  # fmt: skip

    events = services.read_events(
        api, "prefect.flow-run.heartbeat", lambda found: parent_id in run_ids(found)
    )
    return run_ids(events)


def test_the_attack_subflow_runs_without_a_heartbeat_its_parent_keeps(
    digits_mlp, serial, prefect_server, monkeypatch
):
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.settings import get_current_settings

    seen = {"jobs": set()}
    run_job = evaluate_jobs.run_job

    def recording(job):  # in the subflow's task threads, which carry its settings
        seen["jobs"].add(get_current_settings().flows.heartbeat_frequency)
        seen["subflow"] = str(FlowRunContext.get().flow_run.id)
        return run_job(job)

    monkeypatch.setattr(evaluate_jobs, "run_job", recording)

    @flow(name="evaluates-with-a-heartbeat")
    def evaluates():
        seen["id"] = str(FlowRunContext.get().flow_run.id)
        seen["before"] = get_current_settings().flows.heartbeat_frequency
        result = _evaluate(digits_mlp, map_jobs_on(RunParams()))
        seen["after"] = get_current_settings().flows.heartbeat_frequency
        return result

    assert _per_sample(evaluates()) == _per_sample(serial)
    _drain_prefect_workers()
    runs = _heartbeat_runs(prefect_server, seen["id"])
    assert seen["id"] in runs and seen["subflow"] not in runs
    assert seen["before"] == seen["after"] == 180  # Prefect's setting, restored after
    assert seen["jobs"] == {None}  # what the subflow's engine read: no heartbeat thread


def test_a_long_run_keeps_its_heartbeat():
    from prefect.settings import get_current_settings

    from tasks.heartbeats import short_run

    with short_run(lasts_s=600):
        assert get_current_settings().flows.heartbeat_frequency == 180
    with short_run(lasts_s=5):
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == 180
