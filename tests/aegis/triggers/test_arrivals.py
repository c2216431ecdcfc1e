"""Arrivals: which deliveries in the watched sources are complete, new and reportable."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from aegis.config import TriggersParams
from aegis.data.manifest import MANIFEST_NAME, dataset_digest
from aegis.data.publish import upload_dataset
from aegis.errors import RefusedError, UsageError
from aegis.triggers.arrivals import Watch, WatchState, check_source, list_deliveries


def _params(*sources: str, **kw) -> TriggersParams:
    return TriggersParams(sources=list(sources), **{"poll_interval": 1.0, "within": 0.0} | kw)


def _poll(watch: Watch, *, accepted=(), known=False, now=1000.0, names=("digits",)):
    return watch.poll(
        accepted=lambda d: d in accepted, known_run=lambda d: known,
        allowed_names=set(names), now=now,
    )  # fmt: skip


@pytest.fixture
def inbox(env, tmp_path) -> Path:
    """A watched directory holding one signed digits delivery."""
    box = tmp_path / "inbox"
    box.mkdir()
    shutil.copytree(env.dataset, box / "delivery-1")
    return box


def _digest(delivery: Path) -> str:
    return dataset_digest((delivery / MANIFEST_NAME).read_bytes())


def test_a_delivery_is_ready_once_two_polls_agree(inbox, tmp_path):
    watch = Watch(tmp_path / "watch.json", _params(str(inbox)))

    first = _poll(watch)
    assert first.ready == [] and [d.location for d in first.waiting] == [str(inbox / "delivery-1")]
    (ready,) = _poll(watch).ready
    assert ready.digest == _digest(inbox / "delivery-1")
    assert ready.name == "digits" and ready.source == str(inbox)
    assert ready.payload()["digest"] == ready.digest


def test_a_delivery_still_being_copied_is_not_ready(inbox, tmp_path):
    watch = Watch(tmp_path / "watch.json", _params(str(inbox)))
    partial = inbox / "delivery-2"
    partial.mkdir()
    (partial / "digits.parquet").write_bytes(b"half")  # no dataset.sig yet: not a delivery
    _poll(watch)
    assert all(d.location != str(partial) for d in _poll(watch).ready + _poll(watch).waiting)
    # the signature arrives, then another file changes: each change restarts the wait
    shutil.copy(inbox / "delivery-1" / "dataset.sig", partial / "dataset.sig")
    assert [d.location for d in _poll(watch).waiting] == [str(partial)]
    (partial / "digits.parquet").write_bytes(b"more bytes")
    assert [d.location for d in _poll(watch).waiting] == [str(partial)]


def test_emitted_and_accepted_digests_are_not_reported_again(inbox, tmp_path):
    state = tmp_path / "watch.json"
    watch = Watch(state, _params(str(inbox)))
    _poll(watch)
    (ready,) = _poll(watch).ready
    watch.mark_emitted(ready, "event-1", now=1000.0)
    watch.save()

    again = Watch(state, _params(str(inbox)))  # the next watch run remembers
    assert _poll(again, now=1001.0).ready == []
    assert _poll(again, accepted={ready.digest}, now=99999.0).ready == []


def test_a_lost_event_is_reported_again_only_when_no_run_knows_it(inbox, tmp_path):
    watch = Watch(tmp_path / "watch.json", _params(str(inbox), within=10.0, poll_interval=1.0))
    _poll(watch)
    assert _poll(watch, known=True).ready == []  # the server has a run for it: never emitted
    (ready,) = _poll(watch).ready
    watch.mark_emitted(ready, "event-1", now=1000.0)
    grace = 10.0 + 2 * 1.0 + 30
    assert _poll(watch, now=1000.0 + grace - 1).ready == []  # within the grace period
    assert _poll(watch, now=1000.0 + grace + 1, known=True).ready == []  # a run has it
    assert [d.digest for d in _poll(watch, now=1000.0 + grace + 1).ready] == [ready.digest]


def test_unreadable_manifest_and_foreign_names_are_skipped_with_a_reason(inbox, tmp_path):
    bad = inbox / "delivery-bad"
    shutil.copytree(inbox / "delivery-1", bad)
    (bad / MANIFEST_NAME).write_text("{not json")
    watch = Watch(tmp_path / "watch.json", _params(str(inbox)))
    _poll(watch, names=())
    result = _poll(watch, names=())
    reasons = {Path(d.location).name: why for d, why in result.skipped}
    assert "not a valid manifest" in reasons["delivery-bad"]
    assert "not in pipeline.datasets" in reasons["delivery-1"]
    assert result.ready == []


def test_planted_links_are_fingerprinted_not_followed(inbox, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("x")
    (inbox / "delivery-1" / "link").symlink_to(outside)
    linked_dir = inbox / "delivery-linked"
    linked_dir.symlink_to(inbox / "delivery-1")  # a symlinked delivery is not listed
    (delivery,) = list_deliveries(str(inbox))
    assert delivery.location == str(inbox / "delivery-1")


def test_missing_or_symlinked_source_is_a_listing_error_not_a_crash(inbox, tmp_path):
    link = tmp_path / "link-to-inbox"
    link.symlink_to(inbox)
    watch = Watch(tmp_path / "watch.json", _params(str(tmp_path / "missing"), str(link)))
    result = _poll(watch)
    assert len(result.errors) == 2 and result.ready == [] and result.waiting == []


def test_corrupt_watch_state_is_an_empty_cache(tmp_path):
    path = tmp_path / "watch.json"
    for junk in (b"{", b"[]", b'{"format": "other"}', json.dumps({"format": "aegis-watch/1",
                 "seen": [1], "emitted": "x"}).encode()):  # fmt: skip
        path.write_bytes(junk)
        state = WatchState.load(path)
        assert state.seen == {} and state.emitted == {}
    os.mkfifo(tmp_path / "fifo")
    assert WatchState.load(tmp_path / "fifo").seen == {}


@pytest.mark.parametrize(
    ("location", "ok"),
    [
        ("s3://in/drop/", True),
        ("s3://in/drop/batch-1/", True),
        ("s3://in/drop/batch-1", True),
        ("s3://in/drop-evil/batch-1/", False),
        ("s3://in/drop/a/b/", False),
        ("s3://other/drop/batch-1/", False),
        ("/srv/inbox/batch", True),
        ("/srv/inbox/../etc", False),
        ("/srv/inbox/a/b", False),
        ("/srv/elsewhere", False),
    ],
)
def test_a_run_reads_only_deliveries_in_the_configured_sources(location, ok):
    sources = ["s3://in/drop/", "/srv/inbox"]
    if ok:
        assert check_source(location, sources) in sources
    else:
        with pytest.raises(RefusedError) as info:
            check_source(location, sources)
        assert info.value.check == "trigger"


@pytest.mark.integration
def test_s3_upload_is_listed_with_the_signature_last(env, s3_endpoint):
    import boto3

    bucket = f"aegis-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/incoming/batch-1"
    assert upload_dataset(env.dataset, url) == len(list(env.dataset.iterdir()))
    with pytest.raises(UsageError, match="already holds objects"):
        upload_dataset(env.dataset, url)  # a delivery goes to a new prefix
    with pytest.raises(UsageError, match="NoSuchBucket"):
        upload_dataset(env.dataset, f"s3://{bucket}-missing/x")

    (delivery,) = list_deliveries(f"s3://{bucket}/incoming/")
    assert delivery.location == f"s3://{bucket}/incoming/batch-1/"
    assert delivery.digest == _digest(env.dataset)
    watch = Watch(Path(env.root) / ".aegis" / "watch.json", _params(f"s3://{bucket}/incoming/"))
    _poll(watch)
    assert [d.location for d in _poll(watch).ready] == [delivery.location]
    assert check_source(delivery.location, [f"s3://{bucket}/incoming/"])


@pytest.mark.integration
def test_cli_publishes_a_signed_delivery_to_s3(env, s3_endpoint, cli):
    import boto3

    bucket = f"aegis-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/drop/d1"
    args = ("data", "publish", env.raw, "--name", "digits", "--key", env.supplier_key)
    assert cli(*args, "--out", url).code == 0
    (delivery,) = list_deliveries(f"s3://{bucket}/drop/")
    assert delivery.name == "digits" and delivery.problem is None
    again = cli(*args, "--out", url)
    assert again.code == 2 and "already holds objects" in again.err
