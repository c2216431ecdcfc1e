"""The quarantine table; releases: explicit, bound to one dataset version, committed, audited."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from helpers import Env, pipeline_key, verify_log
from validation_helpers import digits_frame, git_status

from aegis import vcs
from aegis.crypto.keys import load_private_key
from aegis.data.quarantine import (
    REASONS,
    ROW,
    build_quarantine,
    read_quarantine,
    release,
    released_rows,
    summarize,
)
from aegis.errors import RefusedError, UsageError
from aegis.pipeline.layout import Layout

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
REASONS_BY_ROW = {
    40: ["column_values_to_be_between(pixel_0_3)"],
    7: ["column_values_to_be_in_set(label)", "column_values_to_be_between(pixel_0_3)"],
    1200: ["compound_columns_to_be_unique(64 columns)"] * 2,  # reported twice: once kept
}


def test_build_quarantine_keeps_rows_positions_and_reasons(template_env):
    frame = digits_frame(template_env)
    frame.index = frame.index + 1000  # positions count, not the index

    out = build_quarantine(frame, REASONS_BY_ROW)

    assert list(out.columns[:2]) == [ROW, REASONS]
    assert list(out.columns[2:]) == list(frame.columns)
    assert out[ROW].tolist() == [7, 40, 1200]
    assert out[REASONS].tolist() == [
        "column_values_to_be_between(pixel_0_3); column_values_to_be_in_set(label)",
        "column_values_to_be_between(pixel_0_3)",
        "compound_columns_to_be_unique(64 columns)",
    ]
    for _, row in out.iterrows():
        original = frame.iloc[int(row[ROW])]
        assert row[list(frame.columns)].tolist() == original.tolist()
    assert list(out.index) == [0, 1, 2]


def test_build_quarantine_with_nothing_failed_is_empty_with_the_schema(template_env):
    frame = digits_frame(template_env)
    out = build_quarantine(frame, {})
    assert len(out) == 0
    assert list(out.columns) == [ROW, REASONS, *frame.columns]


def _quarantine(env: Env) -> None:
    path = env.root / "quarantine" / "digits.parquet"
    path.parent.mkdir()
    build_quarantine(digits_frame(env), REASONS_BY_ROW).to_parquet(path, index=False)


def _release(env: Env, rows, reason: str, digest: str = DIGEST, key=None):
    return release(
        env.ledger(), "digits", dataset_digest=digest, rows=rows, reason=reason,
        operator_key_path=key or env.operator_key,
    )  # fmt: skip


def _copy(env: Env) -> dict:
    return json.loads(Layout(env.root).quarantine_releases("digits").read_text())


def test_read_quarantine_before_any_validation_is_a_usage_error(env):
    with pytest.raises(UsageError, match="aegis validate digits"):
        read_quarantine(Layout(env.root), "digits")


def test_summarize_counts_reasons_and_releases(env):
    _quarantine(env)
    summary = summarize(env.ledger(), "digits", DIGEST)
    assert (summary.rows, summary.released) == (3, 0)
    assert summary.reasons == {
        "column_values_to_be_between(pixel_0_3)": 2,
        "column_values_to_be_in_set(label)": 1,
        "compound_columns_to_be_unique(64 columns)": 1,
    }
    _release(env, [7], "ok")
    assert summarize(env.ledger(), "digits", DIGEST).released == 1
    assert summarize(env.ledger(), "digits", OTHER).released == 0


def test_release_is_signed_audited_and_committed_with_the_actor(env):
    _quarantine(env)
    operator = load_private_key(env.operator_key)

    new = _release(env, [40, 7], "checked by hand: scanner glitch")

    assert new == [7, 40]
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "quarantine.release"
    assert entry.actor == operator.key_id
    assert entry.subjects == {"dataset": DIGEST}
    assert entry.details["rows"] == [7, 40]
    assert entry.details["reason"] == "checked by hand: scanner glitch"
    signed = entry.details["signed"]  # the operator's own signature over the decision
    assert signed["key_id"] == operator.key_id
    assert signed["body"]["dataset"] == DIGEST and signed["body"]["rows"] == [7, 40]
    # the copy in git says the same, and was committed after the audit entry (anchored)
    saved = _copy(env)
    assert saved["dataset"] == DIGEST and saved["rows"] == [7, 40]
    (decision,) = saved["decisions"]
    assert decision["actor"] == operator.key_id and decision["audit_seq"] == entry.seq
    path = Layout(env.root).quarantine_releases("digits")
    head = vcs.head_commit(env.root)
    assert vcs.git(env.root, "log", "-1", "--format=%H", "--", str(path)).strip() == head
    message = vcs.git(env.root, "log", "-1", "--format=%B")
    assert "release 2 row(s) of digits" in message
    assert f"Aegis-Audit: {entry.seq} {entry.hash}" in message
    assert "quarantine/digits.released.json" not in git_status(env.root)
    assert verify_log(env.ws).entries == len(env.ws.audit().entries())


def test_release_all_then_nothing_left(env):
    _quarantine(env)
    assert _release(env, None, "fine") == [7, 40, 1200]
    with pytest.raises(UsageError, match="already released"):
        _release(env, None, "again")


def test_second_release_adds_a_decision(env):
    _quarantine(env)
    _release(env, [7], "one")
    assert _release(env, [7, 40], "two") == [40]  # 7 was already out
    saved = _copy(env)
    assert saved["rows"] == [7, 40]
    assert [d["reason"] for d in saved["decisions"]] == ["one", "two"]
    assert released_rows(env.ledger(), "digits", DIGEST) == {7, 40}


@pytest.mark.parametrize(
    ("rows", "reason", "fragment"),
    [
        ([7], "", "--reason"),
        ([7], "   ", "--reason"),
        ([7, 8, 9], "ok", "[8, 9]"),
        ([5000], "ok", "not in the quarantine"),
    ],
    ids=["no-reason", "blank-reason", "unknown-rows", "out-of-range"],
)
def test_refused_releases_change_nothing(env, rows, reason, fragment):
    _quarantine(env)
    head = vcs.head_commit(env.root)
    entries = len(env.ws.audit().entries())

    with pytest.raises(UsageError) as exc:
        _release(env, rows, reason)

    assert fragment in str(exc.value)
    assert not Layout(env.root).quarantine_releases("digits").exists()
    assert vcs.head_commit(env.root) == head
    assert len(env.ws.audit().entries()) == entries


def test_a_key_that_is_not_an_operator_cannot_release(env):
    _quarantine(env)
    entries = len(env.ws.audit().entries())
    with pytest.raises(RefusedError) as info:
        _release(env, [7], "ok", key=env.supplier_key)
    assert info.value.check == "signer"
    assert len(env.ws.audit().entries()) == entries


def test_release_with_an_empty_quarantine_says_so(env):
    path = env.root / "quarantine" / "digits.parquet"
    path.parent.mkdir()
    build_quarantine(digits_frame(env), {}).to_parquet(path, index=False)
    with pytest.raises(UsageError, match="no row of 'digits' is quarantined"):
        _release(env, None, "x")


def test_released_rows_are_bound_to_the_dataset_digest(env):
    _quarantine(env)
    _release(env, [7, 40], "ok")

    assert released_rows(env.ledger(), "digits", DIGEST) == {7, 40}
    assert released_rows(env.ledger(), "digits", OTHER) == set()  # another version: nothing

    # a release of the other version is its own; the first stays true of its version
    assert _release(env, [1200], "v2", digest=OTHER) == [1200]
    assert released_rows(env.ledger(), "digits", OTHER) == {1200}
    assert released_rows(env.ledger(), "digits", DIGEST) == {7, 40}
    assert _copy(env)["dataset"] == OTHER  # the copy shows the latest version's


# -- releases count only with their signed audit entry (a hostile review's finding) ----------


def test_a_hand_written_releases_file_counts_for_nothing(env):
    _quarantine(env)
    path = Layout(env.root).quarantine_releases("digits")
    path.write_text(json.dumps({"dataset": DIGEST, "rows": [7, 40, 1200], "decisions": []}))
    assert released_rows(env.ledger(), "digits", DIGEST) == set()
    assert summarize(env.ledger(), "digits", DIGEST).released == 0


def test_an_audit_entry_without_the_operators_signature_counts_for_nothing(env):
    _quarantine(env)
    operator = load_private_key(env.operator_key)
    # an entry in the log (a pipeline-key holder, or an older Aegis) with no signed decision
    env.ws.audit().append(
        actor=operator.key_id, action="quarantine.release", pipeline_key=pipeline_key(env.ws),
        subjects={"dataset": DIGEST}, details={"name": "digits", "rows": [7], "reason": "x"},
    )  # fmt: skip
    assert released_rows(env.ledger(), "digits", DIGEST) == set()


def test_a_signed_release_by_a_revoked_operator_counts_for_nothing(env):
    from aegis.trust_ops import change_status

    _quarantine(env)
    _release(env, [7], "ok")
    assert released_rows(env.ledger(), "digits", DIGEST) == {7}
    change_status(env.ws, "ops", status="revoked", reason="leaked", admin_key=env.admin_key)
    assert released_rows(env.ledger(), "digits", DIGEST) == set()


def test_a_release_signed_for_another_version_does_not_count_here(env):
    from aegis.crypto.documents import sign_document
    from aegis.ledger import QUARANTINE_KIND

    _quarantine(env)
    operator = load_private_key(env.operator_key)
    body = {"kind": QUARANTINE_KIND, "name": "digits", "dataset": OTHER, "rows": [7]}
    env.ws.audit().append(  # the entry claims DIGEST; the operator signed OTHER
        actor=operator.key_id, action="quarantine.release", pipeline_key=pipeline_key(env.ws),
        subjects={"dataset": DIGEST},
        details={"name": "digits", "rows": [7], "signed": sign_document(operator, body)},
    )  # fmt: skip
    assert released_rows(env.ledger(), "digits", DIGEST) == set()


def test_a_planted_quarantine_that_is_a_fifo_is_refused_not_read(env):
    path = env.root / "quarantine" / "digits.parquet"
    path.parent.mkdir()
    os.mkfifo(path)
    with pytest.raises(RefusedError) as info:
        read_quarantine(Layout(env.root), "digits")
    assert info.value.check == "file"


def test_quarantine_parquet_round_trips(env):
    _quarantine(env)
    table = read_quarantine(Layout(env.root), "digits")
    assert isinstance(table, pd.DataFrame)
    assert table[ROW].tolist() == [7, 40, 1200]
