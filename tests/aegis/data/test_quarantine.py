"""The quarantine table; releases: explicit, bound to one dataset version, committed, audited."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import Env
from validation_helpers import digits_frame, git_status

from aegis import vcs
from aegis.data.quarantine import (
    REASONS,
    ROW,
    build_quarantine,
    read_quarantine,
    read_releases,
    release,
    released_rows,
    releases_path,
    summarize,
)
from aegis.errors import UsageError

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


def _operator(env: Env) -> str:
    actor, _ = env.ws.actor(env.operator_key)
    return actor


def test_read_quarantine_before_any_validation_is_a_usage_error(env):
    with pytest.raises(UsageError, match="aegis validate digits"):
        read_quarantine(env.ws, "digits")


def test_summarize_counts_reasons_and_releases(env):
    _quarantine(env)
    summary = summarize(env.ws, "digits", DIGEST)
    assert (summary.rows, summary.released) == (3, 0)
    assert summary.reasons == {
        "column_values_to_be_between(pixel_0_3)": 2,
        "column_values_to_be_in_set(label)": 1,
        "compound_columns_to_be_unique(64 columns)": 1,
    }
    release(env.ws, "digits", dataset_digest=DIGEST, rows=[7], reason="ok", actor=_operator(env))
    assert summarize(env.ws, "digits", DIGEST).released == 1
    assert summarize(env.ws, "digits", OTHER).released == 0


def test_release_is_committed_and_audited_with_the_actor(env):
    _quarantine(env)
    actor = _operator(env)

    new = release(
        env.ws,
        "digits",
        dataset_digest=DIGEST,
        rows=[40, 7],
        reason="checked by hand: scanner glitch",
        actor=actor,
    )

    assert new == [7, 40]
    path = releases_path(env.ws, "digits")
    saved = json.loads(path.read_text())
    assert saved["dataset"] == DIGEST and saved["rows"] == [7, 40]
    (decision,) = saved["decisions"]
    assert decision["actor"] == actor and decision["rows"] == [7, 40]
    assert decision["reason"] == "checked by hand: scanner glitch"
    # committed to git: the file is tracked and unchanged since HEAD
    head = vcs.head_commit(env.root)
    assert vcs.git(env.root, "log", "-1", "--format=%H", "--", str(path)).strip() == head
    assert "release 2 row(s) of digits" in vcs.git(env.root, "log", "-1", "--format=%s")
    assert "quarantine/digits.released.json" not in git_status(env.root)
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "quarantine.release"
    assert entry.actor == actor
    assert entry.subjects == {"dataset": DIGEST}
    assert entry.details["rows"] == [7, 40]
    assert entry.details["reason"] == "checked by hand: scanner glitch"
    assert entry.details["commit"] == head
    assert env.ws.verify_audit().entries == len(env.ws.audit().entries())


def test_release_all_then_nothing_left(env):
    _quarantine(env)
    actor = _operator(env)
    assert release(
        env.ws, "digits", dataset_digest=DIGEST, rows=None, reason="fine", actor=actor
    ) == [7, 40, 1200]
    with pytest.raises(UsageError, match="already released"):
        release(env.ws, "digits", dataset_digest=DIGEST, rows=None, reason="again", actor=actor)


def test_second_release_adds_a_decision(env):
    _quarantine(env)
    actor = _operator(env)
    release(env.ws, "digits", dataset_digest=DIGEST, rows=[7], reason="one", actor=actor)
    assert release(
        env.ws, "digits", dataset_digest=DIGEST, rows=[7, 40], reason="two", actor=actor
    ) == [40]  # 7 was already out
    saved = read_releases(env.ws, "digits")
    assert saved["rows"] == [7, 40]
    assert [d["reason"] for d in saved["decisions"]] == ["one", "two"]
    assert released_rows(env.ws, "digits", DIGEST) == {7, 40}


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
        release(
            env.ws, "digits", dataset_digest=DIGEST, rows=rows, reason=reason, actor=_operator(env)
        )

    assert fragment in str(exc.value)
    assert not releases_path(env.ws, "digits").exists()
    assert vcs.head_commit(env.root) == head
    assert len(env.ws.audit().entries()) == entries


def test_release_with_an_empty_quarantine_says_so(env):
    path = env.root / "quarantine" / "digits.parquet"
    path.parent.mkdir()
    build_quarantine(digits_frame(env), {}).to_parquet(path, index=False)
    with pytest.raises(UsageError, match="no row of 'digits' is quarantined"):
        release(env.ws, "digits", dataset_digest=DIGEST, rows=None, reason="x", actor="a")


def test_released_rows_are_bound_to_the_dataset_digest(env):
    _quarantine(env)
    actor = _operator(env)
    release(env.ws, "digits", dataset_digest=DIGEST, rows=[7, 40], reason="ok", actor=actor)

    assert released_rows(env.ws, "digits", DIGEST) == {7, 40}
    assert released_rows(env.ws, "digits", OTHER) == set()  # another version: nothing released

    # a release for the other version starts over; the first stays in git history and the audit log
    assert release(
        env.ws, "digits", dataset_digest=OTHER, rows=[1200], reason="v2", actor=actor
    ) == [1200]
    assert released_rows(env.ws, "digits", OTHER) == {1200}
    assert released_rows(env.ws, "digits", DIGEST) == set()
    first = next(e for e in env.ws.audit().entries() if e.action == "quarantine.release")
    assert first.subjects == {"dataset": DIGEST} and first.details["rows"] == [7, 40]


def test_unreadable_releases_file_is_a_config_error(env):
    from aegis.errors import ConfigError

    _quarantine(env)
    releases_path(env.ws, "digits").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        released_rows(env.ws, "digits", DIGEST)


def test_quarantine_parquet_round_trips(env):
    _quarantine(env)
    table = read_quarantine(env.ws, "digits")
    assert isinstance(table, pd.DataFrame)
    assert table[ROW].tolist() == [7, 40, 1200]
