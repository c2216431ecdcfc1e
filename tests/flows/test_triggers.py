"""Triggered retraining on the session's Prefect server: deploy, events, dedup, who ran it.

The server is a real ``prefect server start`` (its triggers service turns
events into runs). Flow runs here execute in-process, as a worker would run
them, with the parameters the event trigger templated; the team-stack test
(``test_team_stack.py``) runs the same on a worker process and Postgres.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from helpers import snapshot
from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings
from registry_helpers import aegis

from aegis import vcs
from aegis.config import override_params
from aegis.errors import RefusedError
from aegis.ledger import Ledger
from aegis.triggers.arrivals import Watch, list_deliveries
from flows.deploy import deploy_all
from flows.retrain import retrain
from flows.watch import poll_once, watch
from tasks.triggers import emit_arrival

pytestmark = [pytest.mark.integration]
RUN_WAIT_S = 120.0  # how long the server may take to turn an event into a run (loaded CI)


@pytest.fixture
def on_server(prefect_server):
    # logs stay local: the API log worker would flush them at exit, after the server stopped
    with temporary_settings(
        {PREFECT_API_URL: prefect_server, PREFECT_LOGGING_TO_API_ENABLED: False}
    ):
        yield prefect_server


@pytest.fixture
def watched(env, tmp_path):
    """The env workspace watching ``inbox/`` (one signed digits delivery in it), deployed."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copytree(env.dataset, inbox / "delivery-1")
    override_params(env.root / "params.yaml", {"triggers": {"sources": [str(inbox)],
                    "poll_interval": 1, "within": 30}})  # fmt: skip
    vcs.commit_paths(env.root, "test: watch inbox", ["params.yaml"])
    return env, inbox


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _runs_of(deployment_id: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client() as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[uuid.UUID(deployment_id)])
            )
        )


def _wait_for_runs(deployment_id: str, count: int) -> list:
    deadline = time.monotonic() + RUN_WAIT_S
    while ((runs := _runs_of(deployment_id)) and len(runs) < count) or not runs:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(runs)} run(s) of the deployment, {count} expected")
        time.sleep(0.5)
    return runs


def _deployed(env, name: str) -> dict[str, str]:
    deployed = deploy_all(env.root, name=name)
    return {d.name.split("/")[0]: d.id for d in deployed}


def _artifacts(flow_run_id) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    deadline = time.monotonic() + 30
    with _client() as client:
        while True:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
            if found or time.monotonic() > deadline:
                return {a.key: a for a in found}
            time.sleep(0.5)


def test_deploy_registers_five_deployments_and_the_retrain_triggers(watched, on_server):
    env, _ = watched
    name = f"t-{uuid.uuid4().hex[:6]}"
    first = _deployed(env, name)
    again = _deployed(env, name)  # idempotent: the trigger is replaced, not doubled
    assert set(first) == {"watch", "retrain", "promote", "rollback", "monitor"}
    assert first == again
    with _client() as client:
        retrain_dep = client.read_deployment(uuid.UUID(first["retrain"]))
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{first['retrain']}"
        )
        watch_dep = client.read_deployment(uuid.UUID(first["watch"]))
        monitor_dep = client.read_deployment(uuid.UUID(first["monitor"]))
    assert retrain_dep.parameters == {"workspace": str(env.root)}
    assert retrain_dep.global_concurrency_limit.limit == 1
    assert retrain_dep.entrypoint == "flows.retrain.retrain"
    by_event = {next(iter(a.trigger.expect)): a.trigger for a in automations}
    assert set(by_event) == {"aegis.dataset.arrived", "aegis.monitor.breach"}
    assert by_event["aegis.dataset.arrived"].for_each == {"aegis.digest"}
    breach = by_event["aegis.monitor.breach"]  # only a retrain incident starts a run
    assert breach.for_each == {"aegis.incident"}
    assert dict(breach.match.items())["aegis.action"] == ["retrain"]
    assert monitor_dep.parameters == {"workspace": str(env.root)}  # never a key
    assert not monitor_dep.schedules  # monitor.every unset: on demand
    assert watch_dep.schedules and watch_dep.global_concurrency_limit.limit == 1
    assert watch_dep.concurrency_options.collision_strategy == "CANCEL_NEW"


def test_a_burst_for_one_digest_starts_one_run_per_digest(watched, on_server):
    env, inbox = watched
    ids = _deployed(env, f"t-{uuid.uuid4().hex[:6]}")
    ledger = Ledger.load(env.ws)
    (delivery,) = list_deliveries(str(inbox))
    events = [emit_arrival(ledger, delivery) for _ in range(5)]

    (run,) = _wait_for_runs(ids["retrain"], 1)
    # one of the burst's events starts it: which one is the server's order, not ours
    assert run.parameters["event_id"] in events
    assert run.parameters == {
        "workspace": str(env.root), "source": delivery.location, "name": "digits",
        "digest": delivery.digest, "event_id": run.parameters["event_id"],
    }  # fmt: skip
    other_delivery = dataclasses.replace(
        delivery, location=str(inbox / "delivery-2"), digest="sha256:" + "e" * 64
    )
    emit_arrival(ledger, other_delivery)
    runs = _wait_for_runs(ids["retrain"], 2)
    time.sleep(3)  # a duplicate would have been created by now; none may appear
    assert (
        sorted(r.parameters["digest"] for r in _runs_of(ids["retrain"]))
        == sorted([delivery.digest, other_delivery.digest])
        == sorted(r.parameters["digest"] for r in runs)
    )


@pytest.mark.slow
def test_event_run_acts_as_pipeline_key_records_trigger_then_is_already_current(
    watched, on_server, cli
):
    env, inbox = watched
    ledger = Ledger.load(env.ws)
    (delivery,) = list_deliveries(str(inbox))
    event_id = emit_arrival(ledger, delivery)
    params = {"workspace": str(env.root), "source": delivery.location, "name": "digits",
              "digest": delivery.digest, "event_id": event_id}  # fmt: skip

    state = retrain(**params, return_state=True)
    result = state.result()

    pipeline = ledger.pipeline_entry().key_id
    assert result.trigger.kind == "event" and result.trigger.event_id == event_id
    entries = env.ws.audit().entries()
    accepted = next(e for e in entries if e.action == "ingest.accepted")
    created = next(e for e in entries if e.action == "release.created")
    assert accepted.actor == created.actor == pipeline  # unattended: never an operator
    assert accepted.details["trigger"]["event_id"] == event_id
    assert created.details["trigger"] == accepted.details["trigger"]
    release = (env.root / result.release.directory / "release.json").read_text()
    assert event_id in release and '"kind": "event"' in release
    status = cli("--workspace", env.root, "status", "--json")
    (version,) = json.loads(status.out)["models"][0]["versions"]
    assert version["trigger"]["kind"] == "event" and version["trigger"]["event_id"] == event_id
    arts = _artifacts(state.state_details.flow_run_id)
    assert {"digits-dataset", "digits-validation", "digits-model-metrics", "digits-summary"} <= set(
        arts
    )
    assert result.release.tag in arts["digits-summary"].data
    assert delivery.digest in str(arts["digits-dataset"].data)

    before = snapshot(env.root)
    again = retrain(**params)  # the same event again (a duplicate delivery of the trigger)
    assert again.status == "already-current" and again.release == result.release.tag
    assert snapshot(env.root) == before


def test_forged_parameters_change_nothing(watched, on_server, tmp_path, monkeypatch):
    import tasks.triggers

    env, inbox = watched
    ledger = Ledger.load(env.ws)
    (delivery,) = list_deliveries(str(inbox))
    event_id = emit_arrival(ledger, delivery)
    outside = shutil.copytree(env.dataset, tmp_path / "outside")
    good = {"workspace": str(env.root), "source": delivery.location, "name": "digits",
            "digest": delivery.digest, "event_id": event_id}  # fmt: skip
    # (parameters, what the refusal says): each one refused by its own check
    forged = [
        ({**good, "digest": "sha256:" + "0" * 64}, "does not match this run (digest)"),
        ({**good, "digest": None}, "needs the source, name and digest"),  # names no digest
        ({**good, "source": str(outside)}, "does not match this run (location)"),
        ({**good, "event_id": None, "source": str(outside)}, "is not in triggers.sources"),
        ({**good, "event_id": str(uuid.uuid4())}, "is unknown to the Prefect server"),
    ]
    before = snapshot(env.root)
    for params, reason in forged:
        if params["event_id"] not in (None, event_id):
            # An id the server never saw: the runs above found the real event (they refused
            # a mismatch, not an unknown id), so the lag allowance of a just-fired event
            # (tasks.triggers.EVENT_LOOKUP_S, 30 s) only delays this refusal; one retry.
            monkeypatch.setattr(tasks.triggers, "EVENT_LOOKUP_S", 1.0)
        state = retrain(**params, return_state=True)
        with pytest.raises(RefusedError) as info:
            state.result()
        assert info.value.check == "trigger", params
        assert reason in str(info.value), (params, str(info.value))
    monkeypatch.undo()
    assert snapshot(env.root) == before
    # identity is no parameter: a run asking for an actor or --allow-older is not even created
    with pytest.raises(Exception, match=r"actor|allow_older|parameters"):
        retrain(**good, actor="an operator")  # type: ignore[call-arg]


def test_watch_reports_a_complete_delivery_once(watched, on_server):
    env, inbox = watched
    ids = _deployed(env, f"t-{uuid.uuid4().hex[:6]}")
    emitted = watch(workspace=str(env.root), polls=2)
    (event,) = emitted
    assert event["location"] == str(inbox / "delivery-1")
    (run,) = _wait_for_runs(ids["retrain"], 1)
    assert run.parameters["event_id"] == event["event"]
    assert watch(workspace=str(env.root), polls=2) == []  # emitted before: not again


def test_watch_with_the_server_down_reports_later(watched, on_server):
    env, _ = watched
    ledger = Ledger.load(env.ws)
    watcher = Watch(env.ws.watch_state_path, env.ws.params().triggers)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        poll_once(ledger, watcher)
        result, emitted = poll_once(ledger, watcher)  # ready, but the server is down
    assert len(result.ready) == 1 and emitted == [] and watcher.state.emitted == {}
    emitted = watch(workspace=str(env.root), polls=1)  # the next poll, server back
    assert [e["dataset"] for e in emitted] == ["digits"]


def test_cli_service_commands_need_a_reachable_server(env, cli, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for command in ("deploy", "watch", "worker"):
        result = cli("--workspace", env.root, command)
        assert result.code == 2 and "PREFECT_API_URL is not set" in result.err
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    for command in ("deploy", "watch", "worker"):
        result = cli("--workspace", env.root, command)
        assert result.code == 2 and "unreachable at http://127.0.0.1:9/api" in result.err


def test_cli_deploy_prints_the_deployments(watched, prefect_server):
    env, _ = watched
    result = aegis(env.root, "deploy", "--name", "cli", env={"PREFECT_API_URL": prefect_server})
    assert result.returncode == 0, result.stderr
    for name in ("watch/cli", "retrain/cli", "promote/cli", "rollback/cli", "monitor/cli"):
        assert name in result.stdout
    assert "aegis worker" in result.stdout


def test_a_worker_refuses_runs_for_another_workspace(env, monkeypatch, tmp_path):
    from tasks.workspace import pinned_workspace

    monkeypatch.setenv("AEGIS_WORKER_WORKSPACE", str(env.root))
    assert pinned_workspace(Path(env.root)) == Path(env.root)
    with pytest.raises(RefusedError) as info:
        pinned_workspace(tmp_path)
    assert info.value.check == "workspace"
