"""The team stack, for real: Prefect on PostgreSQL, a worker process, S3 on moto_server.

One story, all through the server's API: ``aegis deploy``; ``aegis worker``; a
supplier uploads a signed dataset to the watched prefix; the scheduled watch
run reports it; the event trigger starts retrain on the worker (as the
pipeline key); ``aegis promote --wait`` is approved from another process;
an operator-signed rollback request runs on the worker. Then the audit log,
the registry, PostgreSQL and the artifacts are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
import services
from helpers import SERVER_STARTUP_S
from registry_helpers import BIN, aegis, promote_in_turn, set_promote

from aegis import vcs
from aegis.config import override_params
from aegis.ledger import Ledger
from aegis.registry import tags

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEP_S = 600.0  # the longest one step may take on a loaded 2-core machine (retrain trains)


@pytest.fixture(scope="module")
def pg_prefect(tmp_path_factory):
    """A Prefect server whose database is a PostgreSQL server started here."""
    home = tmp_path_factory.mktemp("prefect-pg")
    fast = {"PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}  # the watch starts promptly
    with (
        services.postgres(home) as database,
        services.prefect_server(
            home, database_url=database, extra_env=fast, timeout=SERVER_STARTUP_S
        ) as (api, _),
    ):
        yield api, database


def _wait(predicate, what: str, timeout: float = STEP_S):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1.0)
    return found


def _final_runs(api: str, flow_name: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return [r for r in runs if r.state and r.state.is_final()]


def _artifact_keys(api: str, flow_run_id) -> set[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in found}


def _flow_runs_in_postgres(database: str) -> int:
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(database.replace("postgresql+asyncpg", "postgresql"))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM flow_run"))
        finally:
            await conn.close()

    return asyncio.run(count())


def test_upload_event_retrain_promote_wait_rollback_on_postgres(
    released_env, pg_prefect, s3_endpoint, tmp_path
):
    import boto3

    api, database = pg_prefect
    env = released_env
    model = env.model
    promote_in_turn(env.ws, model, ["v1.0.0"])  # v1 is prod: the rollback target later
    bucket = f"aegis-team-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    watched = f"s3://{bucket}/incoming/"
    override_params(env.root / "params.yaml", {"triggers": {
        "sources": [watched], "poll_interval": 2, "watch_for": "30s", "within": 60}})  # fmt: skip
    set_promote(env, approvals_required=1, wait_timeout="900s")  # commits params.yaml too
    vcs.commit_paths(env.root, "test: team stack params", ["params.yaml"])
    cli_env = {"PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    deployed = aegis(env.root, "deploy", "--json", env=cli_env)
    assert deployed.returncode == 0, deployed.stderr
    assert {d["name"] for d in json.loads(deployed.stdout)} == {
        "watch/aegis", "retrain/aegis", "promote/aegis", "rollback/aegis",
        "monitor/aegis"}  # fmt: skip

    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [str(BIN / "aegis"), "--workspace", str(env.root), "worker"],
        env={**os.environ, **cli_env, "PREFECT_WORKER_QUERY_SECONDS": "2"},
        stdout=worker_log, stderr=worker_log,
    )  # fmt: skip
    try:
        # a supplier delivers: the CLI signs it and uploads it, the signature last
        published = aegis(env.root, "data", "publish", env.raw, "--name", "digits", "--key",
                          env.supplier_key, "--out", watched + "batch-3", env=cli_env)  # fmt: skip
        assert published.returncode == 0, published.stderr

        # watch (scheduled) -> aegis.dataset.arrived -> retrain on the worker -> v3
        (retrained,) = _wait(lambda: [r for r in _final_runs(api, "retrain")], "the retrain run")
        assert retrained.state.is_completed(), retrained.state.message
        assert retrained.parameters["source"] == watched + "batch-3/"
        ledger = Ledger.load(env.ws)
        v3 = ledger.release(model, "v3.0.0")
        assert v3 is not None and v3.trigger["kind"] == "event"
        assert v3.trigger["event_id"] == retrained.parameters["event_id"]
        assert v3.actor == ledger.pipeline_entry().key_id
        assert {"digits-dataset", "digits-validation", "digits-model-metrics",
                "digits-summary"} <= _artifact_keys(api, retrained.id)  # fmt: skip

        # promote --wait in one process, approved from another
        waiting = subprocess.Popen(
            [str(BIN / "aegis"), "--workspace", str(env.root), "promote", f"{model}@v3",
             "--wait", "--key", str(env.operator_key)],
            env={**os.environ, **cli_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        from aegis.pipeline.layout import Layout
        from aegis.registry import approvals_store

        _wait(lambda: approvals_store.waiting_run(Layout(env.root), model, "v3.0.0")
              or waiting.poll() is not None, "the promote run to wait")  # fmt: skip
        approved = aegis(env.root, "approve", f"{model}@v3", "--key", env.approver_key,
                         env=cli_env)  # fmt: skip
        assert approved.returncode == 0, approved.stderr
        out, err = waiting.communicate(timeout=STEP_S)
        assert waiting.returncode == 0, err
        assert "promoted" in out
        assert tags.read_registry(Ledger.load(env.ws), model).prod == "v3.0.0"
        (promoted,) = _final_runs(api, "promote")
        assert promoted.state.is_completed()
        assert "digits-model-gates" in _artifact_keys(api, promoted.id)

        # rollback on the worker: it holds no operator key, so an operator signs a request
        request = tmp_path / "rollback.json"
        signed = aegis(env.root, "rollback", "--reason", "bad v3 in prod", "--key",
                       env.operator_key, "--sign-request", request, env=cli_env)  # fmt: skip
        assert signed.returncode == 0, signed.stderr
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "rollback/aegis", "--param",
             f"request={request.read_text()}"],
            env={**os.environ, **cli_env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr + run.stdout
        (rolled,) = _wait(lambda: _final_runs(api, "rollback"), "the rollback run")
        assert rolled.state.is_completed(), rolled.state.message
    finally:
        services.stop(worker)
        worker_log.close()

    ledger = Ledger.load(env.ws)
    state = tags.read_registry(ledger, model)
    assert state.prod == "v1.0.0" and "v3.0.0" in state.bad
    accepted = ledger.log.by_action("ingest.accepted")[-1]
    assert accepted.details["trigger"]["kind"] == "event"
    assert accepted.actor == ledger.pipeline_entry().key_id
    assert len(ledger.log.by_action("rollback.done")) == 1
    rollback_intent = ledger.log.by_action("rollback.intent")[-1]
    assert rollback_intent.actor == ledger.actor(env.operator_key)[0]
    assert rollback_intent.details["request"].startswith("sha256:")
    assert _flow_runs_in_postgres(database) >= 4  # watch, retrain, promote, rollback
