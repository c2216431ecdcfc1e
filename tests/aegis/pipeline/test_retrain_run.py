"""The retrain run without Prefect: one per workspace, idempotent per digest, trigger recorded."""

from __future__ import annotations

import json
import threading

import pytest
from helpers import snapshot

from aegis.data.manifest import MANIFEST_NAME, dataset_digest
from aegis.errors import RefusedError
from aegis.pipeline import retrain as steps
from aegis.pipeline.retrain import AlreadyCurrent, RetrainResult, run_retrain
from aegis.triggers.record import Trigger

EVENT = Trigger(kind="event", event_id="e-1", event="aegis.dataset.arrived", source="inbox/x")


def _run(env, **kw):
    ledger = env.ledger()
    args = {"source": str(env.dataset), "name": "digits", "actor": ledger.pipeline_entry().key_id}
    return run_retrain(ledger, **(args | kw))


@pytest.mark.slow
def test_a_run_that_died_after_storing_is_completed_by_the_next_then_already_current(
    env, monkeypatch
):
    def died(*_):
        raise RuntimeError("the worker died here")

    monkeypatch.setattr(steps, "TRAIN", steps.Step("train-model", died))
    with pytest.raises(RuntimeError, match="worker died"):
        _run(env, trigger=EVENT)
    ledger = env.ledger()
    digest = dataset_digest((env.dataset / MANIFEST_NAME).read_bytes())
    assert ledger.accepted(digest) is not None and ledger.releases() == {}
    monkeypatch.undo()

    completed = _run(env, trigger=EVENT)

    assert isinstance(completed, RetrainResult) and completed.status == "completed"
    assert completed.ingest is None and completed.release.dataset_digest == digest
    info = json.loads((env.root / completed.release.directory / "release.json").read_text())
    assert info["trigger"] == EVENT.to_dict()
    before = snapshot(env.root)
    again = _run(env, trigger=EVENT)
    assert isinstance(again, AlreadyCurrent) and again.release == completed.release.tag
    assert "already current" in again.message()
    assert snapshot(env.root) == before


def test_an_unattended_run_never_takes_an_older_dataset(env):
    before = snapshot(env.root)
    for kind in ("event", "schedule"):
        with pytest.raises(RefusedError) as info:
            _run(env, trigger=Trigger(kind=kind), allow_older=True)
        assert info.value.check == "trigger"
    assert snapshot(env.root) == before


def test_a_delivery_whose_digest_is_not_the_events_is_refused_before_storing(env):
    before = snapshot(env.root)
    with pytest.raises(RefusedError) as info:
        _run(env, trigger=EVENT, expect_digest="sha256:" + "0" * 64)
    assert info.value.check == "trigger" and "forged event" in str(info.value)
    assert snapshot(env.root) == before


def test_a_second_run_waits_for_the_first(env):
    """The run lock: a run started while another holds it waits (and says so) before starting."""
    held, release = threading.Event(), threading.Event()

    def other_run():
        with env.ws.run_lock():
            held.set()
            release.wait(60)

    thread = threading.Thread(target=other_run)
    thread.start()
    held.wait(60)
    waited = []

    def on_wait():
        waited.append(True)
        release.set()  # the other run ends; this one goes on

    with pytest.raises(RefusedError):  # it then runs, and refuses the bad digest: it did start
        _run(env, expect_digest="sha256:" + "1" * 64, on_wait=on_wait)
    thread.join(60)
    assert waited == [True]


def test_trigger_records_round_trip_and_reject_junk():
    for trigger in (EVENT, Trigger(kind="schedule", schedule="0 3 * * *"), Trigger("manual")):
        assert Trigger.from_dict(trigger.to_dict()) == trigger
    for junk in (None, [], {"kind": "root"}, {"kind": "event", "event_id": 3}):
        assert Trigger.from_dict(junk) is None
    assert EVENT.describe().startswith("event e-1")
