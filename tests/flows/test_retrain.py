"""The ``retrain`` flow: in-process under Prefect's test harness, and ``aegis run`` end to end.

In-process runs use ``prefect_test_harness`` (a temporary Prefect API and
database); the CLI runs in a subprocess against the session Prefect server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import SERVER_STARTUP_S, copy_env, snapshot, verify_log
from prefect import flow, task
from prefect.states import Completed, Failed
from prefect.testing.utilities import prefect_test_harness
from validation_helpers import BAD_PIXEL, corrupt, digits_frame, git_status, publish_frame

from aegis import vcs
from aegis.data.manifest import MANIFEST_NAME, dataset_digest
from aegis.errors import RefusedError, TransientIOError
from aegis.pipeline import retrain as steps
from aegis.train.checkpoint import model_digest
from aegis.workspace import Workspace
from flows.retrain import manual_run
from flows.retrain import retrain as retrain_flow
from tasks.steps import retry_on_io_only, task_of

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def _prefect_harness():
    with prefect_test_harness(server_startup_timeout=SERVER_STARTUP_S):
        yield


def retrain(*, actor: str, allow_older: bool = False, **kwargs):
    """The flow as `aegis run` calls it: a person's run (their key id in the context)."""
    with manual_run(actor, allow_older=allow_older):
        return retrain_flow(**kwargs)


def _tampered_copy(dataset: Path, dst: Path) -> Path:
    shutil.copytree(dataset, dst)
    data = bytearray((dst / "digits.parquet").read_bytes())
    data[len(data) // 2] ^= 0x01
    (dst / "digits.parquet").write_bytes(bytes(data))
    return dst


def _staging_empty(root: Path) -> bool:
    staging = root / ".aegis" / "staging"
    return not staging.exists() or not any(staging.iterdir())


def _set_params(root: Path, **ingest_params) -> None:
    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data["ingest"].update(ingest_params)
    path.write_text(yaml.safe_dump(data))
    vcs.commit_paths(root, "test: ingest params", ["params.yaml"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_runs(flow_state, prefix: str, timeout: float = 15.0) -> list:
    """Task runs of a finished flow run whose name starts with ``prefix`` (final states)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                r
                for r in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                if r.name.startswith(prefix)
            ]
            # task-run states reach the API through events: wait until they are final
            if runs and all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"task runs of {prefix} not final: {runs}")
            time.sleep(0.2)


# -- the flow in-process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def retrained(_prefect_harness, template_env, tmp_path_factory):
    """A copy of the template after one retrain of the signed digits: ``(env, result, actor)``.

    One run (ingest to release, a minute on a loaded machine) shared by the tests that
    check what a successful run left; they only read the workspace.
    """
    env = copy_env(template_env.root.parent, tmp_path_factory.mktemp("retrained") / "env")
    actor, _ = env.ledger().actor(None)
    result = retrain(workspace=str(env.root), source=str(env.dataset), name="digits", actor=actor)
    return env, result, actor


def test_retrain_accepts_signed_dataset(retrained):
    env, result, actor = retrained

    ingested, validated = result.ingest, result.validate
    assert ingested.name == "digits"
    assert ingested.digest == dataset_digest((env.dataset / MANIFEST_NAME).read_bytes())
    assert ingested.actor == actor
    assert ingested.rows == 1797
    every_entry = env.ws.audit().entries()
    # the release comes last: one journaled registry change, with its audited evidence
    assert [e.action for e in every_entry[-3:]] == [
        "release.intent",
        "release.created",
        "release.done",
    ]
    released = result.release
    assert (released.tag, released.directory) == ("digits-model@v1.0.0", "releases/digits-model/v1")
    assert every_entry[-2].subjects == {
        "model": result.train.digest,
        "dataset": ingested.digest,
        "evidence": released.evidence_digest,
    }
    assert released.model_digest == result.train.digest
    assert vcs.git(env.root, "rev-list", "-n1", released.tag).strip() == released.commit
    all_entries = every_entry[:-3]
    # ingest, the validation of the same version, then training and evaluation on it
    assert [e.action for e in all_entries[-4:]] == [
        "ingest.accepted",
        "validate.passed",
        "train.done",
        "evaluate.done",
    ]
    assert all_entries[-2].subjects["dataset"] == ingested.digest
    assert all_entries[-2].subjects["model"] == result.train.digest
    assert all_entries[-1].subjects["model"] == result.train.digest
    assert result.evaluate.metrics["model"] == result.train.digest
    entries = all_entries[:-2]
    assert entries[-2].subjects == {"dataset": ingested.digest}
    assert entries[-2].details["source"] == str(env.dataset)
    assert entries[-1].subjects["dataset"] == ingested.digest
    assert entries[-1].actor == actor
    assert verify_log(env.ws).entries == len(every_entry)
    assert sorted(p.name for p in (env.root / "data" / "digits").iterdir()) == sorted(
        p.name for p in env.dataset.iterdir()
    )
    # the ingest commit versions the data; validation, train, evaluate, release commits follow
    log = vcs.git(env.root, "log", "--format=%H", "-5").split()
    assert log[4] == ingested.commit and log[0] == released.commit
    assert vcs.git(env.root, "log", "-1", "--format=%H", "--", "data/digits.dvc").strip() == (
        ingested.commit
    )
    assert validated.success and validated.dataset == ingested.digest
    assert validated.rows["total"] == 1797 and validated.rows["quarantined"] == 0
    assert validated.drift.reference is None  # the first version has nothing to drift from
    assert any(p.is_file() for p in (env.root / ".aegis" / "dvc-remote").rglob("*"))
    assert _staging_empty(env.root)
    assert git_status(env.root) == ""


@pytest.mark.slow
def test_dvc_repro_trains_the_same_model_as_the_flow(retrained, template_env, cli, tmp_path):
    """Same data and params: the retrain flow and `dvc repro` give the same model digest."""
    env, result, _ = retrained

    digest = model_digest(env.root / "models" / "digits")
    assert result.train.digest == digest and result.train.directory == "models/digits"
    assert result.evaluate.metrics["model"] == digest
    assert result.evaluate.metrics_path == "reports/digits/metrics.json"

    # another copy of the same template (same committed params): ingest, then the DVC stages
    other = tmp_path / "other"
    shutil.copytree(template_env.root.parent, other, symlinks=True)
    root = other / "ws"
    ingested = cli("--workspace", root, "ingest", other / "digits-signed", "--name", "digits")
    assert ingested.code == 0, ingested.err
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--no-run-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "AEGIS_WORKSPACE"} | {"PATH": path},
        timeout=300,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("validate@digits", "train@digits", "evaluate@digits"):
        assert f"Running stage '{stage}'" in proc.stdout, proc.stdout
    assert model_digest(root / "models" / "digits") == digest
    metrics = (root / "reports" / "digits" / "metrics.json").read_bytes()
    assert metrics == (env.root / "reports" / "digits" / "metrics.json").read_bytes()
    flow_lock, repro_lock = (
        yaml.safe_load((r / "dvc.lock").read_text())["stages"] for r in (env.root, root)
    )
    for stage in ("train@digits", "evaluate@digits"):
        assert repro_lock[stage]["cmd"] == flow_lock[stage]["cmd"]
        assert repro_lock[stage]["params"] == flow_lock[stage]["params"]
    # the audit of both runs names the same model, trained on the same dataset
    (flow_train,) = [e for e in env.ws.audit().entries() if e.action == "train.done"]
    (repro_train,) = [e for e in Workspace(root).audit().entries() if e.action == "train.done"]
    expected = {"model": digest, "dataset": result.ingest.digest}
    assert flow_train.subjects == expected and repro_train.subjects == expected


def test_retrain_refuses_tampered_dataset(env, tmp_path):
    tampered = _tampered_copy(env.dataset, tmp_path / "tampered")
    actor, _ = env.ledger().actor(None)
    before = snapshot(env.root)

    with pytest.raises(RefusedError) as exc:
        retrain(workspace=str(env.root), source=str(tampered), name="digits", actor=actor)

    assert exc.value.check == "integrity"
    assert "digits.parquet" in str(exc.value)
    assert snapshot(env.root) == before
    assert _staging_empty(env.root)


def test_retrain_refuses_bad_name_before_any_task(env):
    before = snapshot(env.root)
    state = retrain(
        workspace=str(env.root),
        source=str(env.dataset),
        name="../digits",
        actor="x",
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="dataset name"):
        state.result()
    assert snapshot(env.root) == before


def test_retrain_refuses_broken_schema_before_storing(env, tmp_path, monkeypatch):
    """A table-level failure stops the run before ingest stores anything."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the failure's report goes
    broken = publish_frame(env, digits_frame(env).drop(columns=[BAD_PIXEL]), "broken")
    actor, _ = env.ledger().actor(None)
    before = snapshot(env.root)

    with pytest.raises(RefusedError) as exc:
        retrain(workspace=str(env.root), source=str(broken), name="digits", actor=actor)

    assert exc.value.check == "validation"
    assert "table-level" in str(exc.value)
    assert f"report: {tmp_path}" in str(exc.value)  # written outside the workspace
    assert snapshot(env.root) == before
    assert not (env.root / "data" / "digits").exists()
    assert _staging_empty(env.root)


def test_retrain_quarantines_corrupted_rows_and_continues(env):
    bad_rows = [3, 500, 1200]
    source = publish_frame(env, corrupt(digits_frame(env), bad_rows), "corrupted")
    actor, _ = env.ledger().actor(None)

    result = retrain(workspace=str(env.root), source=str(source), name="digits", actor=actor)

    assert result.validate.success
    assert result.validate.rows["quarantined"] == len(bad_rows)
    reason = f"column_values_to_be_between({BAD_PIXEL})"
    assert result.validate.quarantine_reasons == {reason: len(bad_rows)}
    quarantine = pd.read_parquet(env.root / "quarantine" / "digits.parquet")
    assert quarantine["_aegis_row"].tolist() == bad_rows
    assert set(quarantine["_aegis_reasons"]) == {reason}
    assert (quarantine[BAD_PIXEL] == 99.0).all()
    lock = yaml.safe_load((env.root / "dvc.lock").read_text())
    assert "validate@digits" in lock["stages"]
    assert (env.root / "data" / "digits").is_dir()  # the run continued: the version is stored
    assert git_status(env.root) == ""  # everything Aegis wrote is committed or ignored


def test_refusal_in_staging_is_not_retried(env, tmp_path):
    """A symlink in the source is a refusal: the I/O task fails once, no retry."""
    _set_params(env.root, io_retries=2, io_retry_delay_s=0.0)
    src = tmp_path / "src"
    shutil.copytree(env.dataset, src)
    (src / "digits.parquet").unlink()
    (src / "digits.parquet").symlink_to(env.dataset / "digits.parquet")
    actor, _ = env.ledger().actor(None)
    before = snapshot(env.root)

    state = retrain(
        workspace=str(env.root), source=str(src), name="digits", actor=actor, return_state=True
    )

    assert state.is_failed()
    with pytest.raises(RefusedError) as exc:
        state.result()
    assert exc.value.check == "symlink"
    (run,) = _task_runs(state, "stage-dataset")
    assert run.run_count == 1
    assert run.state.is_failed()
    assert snapshot(env.root) == before


def test_transient_io_error_in_staging_is_retried(env, monkeypatch):
    """S3 unreachable is transient: stage_dataset runs 1 + ingest.io_retries times."""
    _set_params(env.root, io_retries=1, io_retry_delay_s=0.0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    actor, _ = env.ledger().actor(None)
    before = snapshot(env.root)

    state = retrain(
        workspace=str(env.root),
        source=f"s3://aegis-{uuid.uuid4().hex[:8]}/pre",
        name="digits",
        actor=actor,
        return_state=True,
    )

    assert state.is_failed()
    with pytest.raises(TransientIOError):
        state.result()
    (run,) = _task_runs(state, "stage-dataset")
    assert run.run_count == 2
    assert snapshot(env.root) == before
    assert _staging_empty(env.root)


# -- the retry condition ------------------------------------------------------------------------


def test_io_steps_become_tasks_retried_on_io_only_and_the_rest_never(env):
    ledger = env.ledger()
    io = [s for s in steps.STEPS if s.io]
    assert {s.name for s in io} == {"stage-dataset", "push-dataset", "push-stages", "push-release"}
    for step in steps.STEPS:
        t = task_of(step, ledger)
        assert t.name == step.name
        if step.io:
            assert t.retry_condition_fn is retry_on_io_only
            assert t.retries == ledger.ws.params().ingest.io_retries >= 1
        else:
            assert t.retries == 0


def test_retry_condition_on_built_states():
    assert retry_on_io_only(None, None, Failed(data=TransientIOError("S3 unreachable"))) is True
    assert retry_on_io_only(None, None, Failed(data=RefusedError("integrity", "bad"))) is False
    assert retry_on_io_only(None, None, Failed(data=ValueError("bug"))) is False
    assert retry_on_io_only(None, None, Completed(data=1)) is False


def test_retry_condition_on_real_task_states():
    calls = {"io": 0, "refused": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_io_only)
    def flaky_io():
        calls["io"] += 1
        raise TransientIOError("S3 unreachable")

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_io_only)
    def refused():
        calls["refused"] += 1
        raise RefusedError("integrity", "bad bytes")

    @flow
    def both():
        return flaky_io(return_state=True), refused(return_state=True)

    io_state, refused_state = both()

    assert io_state.is_failed() and refused_state.is_failed()
    assert retry_on_io_only(None, None, io_state) is True
    assert retry_on_io_only(None, None, refused_state) is False
    assert calls == {"io": 3, "refused": 1}


# -- aegis run in a subprocess, against a Prefect server --------------------------------------


def _aegis_run(root: Path, source: Path, prefect_server: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    env.pop("AEGIS_WORKSPACE", None)
    return subprocess.run(
        [str(BIN / "aegis"), "--workspace", root, "run", "--source", source, "--name", "digits"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_cli_run_accepts_and_refuses(env, tmp_path, prefect_server):
    proc = _aegis_run(env.root, env.dataset, prefect_server)
    assert proc.returncode == 0, proc.stderr
    digest = dataset_digest((env.dataset / MANIFEST_NAME).read_bytes())
    assert digest in proc.stdout
    assert "Traceback" not in proc.stderr
    actions = [e.action for e in env.ws.audit().entries()[-7:]]
    assert actions == [
        "ingest.accepted", "validate.passed", "train.done", "evaluate.done",
        "release.intent", "release.created", "release.done",
    ]  # fmt: skip
    assert "validation of 'digits'" in proc.stdout
    assert "released digits-model@v1.0.0 -> releases/digits-model/v1" in proc.stdout
    assert "robust (worst case)" in proc.stdout

    tampered = _tampered_copy(env.dataset, tmp_path / "tampered")
    before = snapshot(env.root)
    proc = _aegis_run(env.root, tampered, prefect_server)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("refused: integrity:")
    assert "Traceback" not in proc.stderr
    assert snapshot(env.root) == before
