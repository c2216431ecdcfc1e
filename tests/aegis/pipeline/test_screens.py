"""The poisoning screens in the pipeline: attack our own workspace, then score the quarantine.

Digits v1 is validated (its row index is the label diff's reference); the attack
simulator signs a poisoned copy as the env's supplier (the insider case), which
is ingested and validated like any delivery. The template runs the label diff
only (FAST_PARAMS): it is exact, so its figures are asserted exactly here.
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import snapshot
from validation_helpers import git_status

from aegis.errors import RefusedError
from aegis.pipeline.retrain import run_retrain
from aegis.pipeline.screen import ScreenRefusal
from aegis.pipeline.train import load_training_frame


def _poison(cli, env, kind: str, rate: float, *extra: str, out: str = "poisoned"):
    target, truth = env.root.parent / out, env.root.parent / f"{out}-truth.json"
    result = cli(
        "attack", "poison", str(env.dataset), "--name", "digits", "--kind", kind,
        "--rate", str(rate), "--key", str(env.supplier_key), "--out", str(target),
        "--truth", str(truth), "--seed", "3", "--json", *extra,
    )  # fmt: skip
    assert result.code == 0, result.err
    return target, truth


def _without_audit(tree: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tree.items() if not k.startswith("/.aegis/audit/")}


def test_relabelled_rows_of_an_accepted_version_are_quarantined_and_scored(cli, validated):
    env = validated
    target, truth = _poison(cli, env, "boundary", 0.05)
    document = json.loads(truth.read_text())
    assert len(document["rows"]) == 90 and document["kind"] == "boundary"
    # the pipeline never reads the truth file: any read of a FIFO would hang the test
    truth.rename(truth.with_suffix(".kept"))
    os.mkfifo(truth)

    assert cli("--workspace", env.root, "ingest", str(target), "--name", "digits").code == 0
    validated_now = cli("--workspace", env.root, "validate", "digits", "--json")

    assert validated_now.code == 0, validated_now.err
    result = json.loads(validated_now.out)
    assert result["quarantine_reasons"] == {"label-changed": 90}
    assert result["screens"]["label-changed"]["flagged"] == 90
    assert result["rows"]["screened"] == 90 and result["rows"]["fraction"] == 0.0
    records = json.loads(cli("--workspace", env.root, "quarantine", "show", "digits",
                             "--json").out)  # fmt: skip
    assert [r["row"] for r in records] == document["rows"]
    assert all(r["reasons"] == ["label-changed"] and not r["released"] for r in records)
    page = (env.root / "validation" / "digits" / "report.html").read_text()
    assert "Poisoning screens" in page and "90 row(s) flagged" in page
    assert page.count("<figure") == 48 and f"row {document['rows'][0]}<br>" in page
    os.unlink(truth)
    truth.with_suffix(".kept").rename(truth)
    scored = cli("--workspace", env.root, "attack", "score", str(truth), "--name", "digits",
                 "--json")  # fmt: skip
    assert scored.code == 0, scored.err
    figures = json.loads(scored.out)
    assert (figures["precision"], figures["recall"], figures["f1"]) == (1.0, 1.0, 1.0)
    assert figures["reasons"]["label-changed"]["true_positives"] == 90
    assert git_status(env.root) == ""

    # flagged rows never train unless an operator releases them (signed, audited)
    assert len(load_training_frame(env.ledger(), "digits").frame) == 1797 - 90
    released = cli("--workspace", env.root, "quarantine", "release", "digits", "--rows",
                   f"{document['rows'][0]}", "--reason", "checked by hand", "--key",
                   str(env.operator_key))  # fmt: skip
    assert released.code == 0, released.err
    assert len(load_training_frame(env.ledger(), "digits").frame) == 1797 - 89


def test_a_run_over_the_screen_limit_stops_stores_nothing_and_counts_against_the_supplier(
    cli, validated
):
    env = validated
    # half the rows relabelled: with v1's clean 1797 rows, 898 of 3594 (25 %) flagged
    target, _ = _poison(cli, env, "flip", 0.5)
    before = snapshot(env.root)
    ledger = env.ledger()

    with pytest.raises(ScreenRefusal) as info:
        run_retrain(ledger, source=str(target), name="digits",
                    actor=ledger.pipeline_entry().key_id)  # fmt: skip

    assert info.value.check == "screen" and "label-changed" in str(info.value)
    assert "screen.max_flagged_fraction" in str(info.value)
    assert info.value.report["flagged"] == 898 and len(info.value.report["row_reasons"]) == 898
    assert _without_audit(snapshot(env.root)) == _without_audit(before)
    refused = env.ws.audit().entries()[-1]
    assert refused.action == "screen.refused" and refused.details["supplier"] == "acme"

    # the supplier is now over screen.max_supplier_flag_rate: refused at ingest
    listed = {e["name"]: e for e in json.loads(cli("--workspace", env.root, "--json", "trust",
                                                   "list").out)}  # fmt: skip
    assert listed["acme"]["reputation"]["blocked"] is True
    (acme,) = json.loads(cli("--workspace", env.root, "status", "--json").out)["suppliers"]
    assert (acme["supplier"], acme["flagged"], acme["rows"], acme["refused"]) == (
        "acme",
        898,
        2 * 1797,
        1,
    )
    assert "blocked at ingest" in cli("--workspace", env.root, "status").out
    again = cli("--workspace", env.root, "ingest", str(env.dataset), "--name", "digits")
    assert again.code == 1 and "supplier-reputation" in again.err
    assert "aegis trust readmit acme" in again.err

    no_admin = cli("--workspace", env.root, "trust", "readmit", "acme", "--reason", "fixed")
    assert no_admin.code == 2
    wrong = cli("--workspace", env.root, "trust", "readmit", "acme", "--reason", "fixed",
                "--admin-key", str(env.operator_key))  # fmt: skip
    assert wrong.code == 1 and "signer" in wrong.err
    why = "supplier rebuilt its labelling"
    readmitted = cli("--workspace", env.root, "trust", "readmit", "acme", "--reason", why,
                     "--admin-key", str(env.admin_key))  # fmt: skip
    assert readmitted.code == 0, readmitted.err
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "supplier.readmitted" and entry.details["signed"]["body"]["before"]
    assert git_status(env.root) == ""
    assert cli("--workspace", env.root, "trust", "readmit", "acme", "--reason", "again",
               "--admin-key", str(env.admin_key)).code == 2  # not blocked any more  # fmt: skip


def test_a_forged_readmission_entry_counts_for_nothing(cli, validated):
    """Only an admin's signed document re-admits: the pipeline key alone cannot."""
    env = validated
    target, _ = _poison(cli, env, "flip", 0.5)
    ledger = env.ledger()
    with pytest.raises(RefusedError):
        run_retrain(ledger, source=str(target), name="digits",
                    actor=ledger.pipeline_entry().key_id)  # fmt: skip
    ledger = env.ledger()
    with ledger.locked():
        ledger.append("supplier.readmitted", actor=ledger.pipeline_entry().key_id,
                      subjects={}, details={"supplier": "acme", "reason": "forged"})  # fmt: skip
    again = cli("--workspace", env.root, "ingest", str(env.dataset), "--name", "digits")
    assert again.code == 1 and "supplier-reputation" in again.err


def test_a_stopped_run_reports_what_it_flagged_as_json(cli, validated):
    env = validated
    target, _ = _poison(cli, env, "flip", 0.25)
    assert cli("--workspace", env.root, "ingest", str(target), "--name", "digits").code == 0
    stopped = cli("--workspace", env.root, "validate", "digits", "--json")
    assert stopped.code == 1 and "screen: label-changed" in stopped.err
    report = json.loads(stopped.out)
    assert report["refused"] == "screen" and report["report"]["flagged"] == 449
    assert len(report["report"]["screens"]["label-changed"]["rows"]) == 449


@pytest.mark.parametrize(
    ("case", "detail"),
    [("missing", "no such truth file"), ("unknown-rows", "does not have"), ("not-truth", "rows")],
)
def test_attack_score_refuses_bad_truth_files(cli, validated, case, detail):
    env = validated
    truth = env.root.parent / "truth.json"
    if case == "unknown-rows":
        truth.write_text(json.dumps({"kind": "flip", "rows": [3, 5000]}))
    elif case == "not-truth":
        truth.write_text(json.dumps({"kind": "flip", "rows": ["a"]}))
    result = cli("--workspace", env.root, "attack", "score", str(truth), "--name", "digits")
    assert result.code == 2 and detail in result.err, result.err


def test_attack_poison_refuses_bad_places_and_settings(cli, validated):
    env = validated
    base = env.root.parent
    common = ("attack", "poison", str(env.dataset), "--name", "digits", "--key",
              str(env.supplier_key))  # fmt: skip
    inside = cli(*common, "--kind", "flip", "--rate", "0.1", "--out", str(base / "p"),
                 "--truth", str(base / "p" / "truth.json"))  # fmt: skip
    assert inside.code == 2 and "outside --out" in inside.err
    stage = cli(*common, "--kind", "flip", "--rate", "0.1", "--out", str(env.root / "data" / "x"),
                "--truth", str(base / "t.json"))  # fmt: skip
    assert stage.code == 1 and "path" in stage.err
    for bad in (("--kind", "nope", "--rate", "0.1"), ("--kind", "flip", "--rate", "0"),
                ("--kind", "pair", "--rate", "0.5", "--from", "1"),
                ("--kind", "pair", "--rate", "0.5", "--from", "1", "--to", "42")):  # fmt: skip
        result = cli(*common, *bad, "--out", str(base / "q"), "--truth", str(base / "q.json"))
        assert result.code == 2, (bad, result.err)
        assert not (base / "q").exists() and not (base / "q.json").exists()


def _enable(env, *screens: str) -> None:
    from aegis import vcs
    from aegis.config import override_params

    override_params(env.root / "params.yaml", {"screen": {"enabled": list(screens)}})
    vcs.commit_paths(env.root, "test: screens", ["params.yaml"])


def test_the_label_issue_screen_finds_flips_in_a_first_delivery(cli, ingested):
    """No earlier version to diff against: the model-based screen has to find them."""
    env = ingested
    _enable(env, "label-changed", "label-issue")
    target, truth = _poison(cli, env, "flip", 0.05)
    assert cli("--workspace", env.root, "ingest", str(target), "--name", "digits").code == 0

    result = cli("--workspace", env.root, "validate", "digits", "--json")

    assert result.code == 0, result.err
    screens = json.loads(result.out)["screens"]
    assert screens["skipped"] == {"label-changed": "no earlier validated version"}
    figures = json.loads(cli("--workspace", env.root, "attack", "score", str(truth), "--name",
                             "digits", "--json").out)  # fmt: skip
    assert figures["precision"] >= 0.85 and figures["recall"] >= 0.8, figures
    assert figures["clean_flagged_share"] <= 0.01


def test_the_backdoor_screen_finds_badnets_rows_in_a_first_delivery(cli, ingested):
    env = ingested
    _enable(env, "backdoor")
    target, truth = _poison(cli, env, "badnets", 0.05)
    assert cli("--workspace", env.root, "ingest", str(target), "--name", "digits").code == 0

    result = cli("--workspace", env.root, "validate", "digits", "--json")

    assert result.code == 0, result.err
    figures = json.loads(cli("--workspace", env.root, "attack", "score", str(truth), "--name",
                             "digits", "--json").out)  # fmt: skip
    assert figures["recall"] >= 0.9 and figures["clean_flagged_share"] <= 0.02, figures
    assert set(figures["reasons"]) == {"backdoor"}


def test_over_the_limit_by_the_label_diff_alone_the_model_screens_are_not_run(cli, validated):
    env = validated
    _enable(env, "label-changed", "label-issue", "backdoor")
    target, _ = _poison(cli, env, "flip", 0.25)
    assert cli("--workspace", env.root, "ingest", str(target), "--name", "digits").code == 0
    stopped = cli("--workspace", env.root, "validate", "digits", "--json")
    assert stopped.code == 1 and "screen: label-changed" in stopped.err
    report = json.loads(stopped.out)["report"]
    assert report["flagged"] == 449 and set(report["screens"]) == {"label-changed"}
