"""``aegis validate``, the DVC ``validate`` stage and ``aegis quarantine``, end to end.

Validation runs Great Expectations for real on the stored (re-verified)
dataset. A refusal exits 1 with the failed check in one stderr line and
leaves the workspace exactly as it was; a success writes the quarantine,
``result.json``, the report and the drift profile, records the stage in
``dvc.lock``, commits, pushes and audits.

Workspaces with digits already ingested (and validated) are built once per
module and copied per test: an ingest costs seconds, a copy milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import CliResult, Env, copy_env, snapshot
from validation_helpers import (
    BAD_PIXEL,
    corrupt,
    digits_frame,
    git_status,
    ingest_digits,
    publish_frame,
    resample,
    sha256_file,
    skewed,
    validate_digits,
)

from aegis.data.manifest import MANIFEST_NAME, dataset_digest

BIN = Path(sys.executable).parent
BAD_ROWS = [3, 500, 1200]
BETWEEN = f"column_values_to_be_between({BAD_PIXEL})"


# -- workspaces ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quarantined_base(template_env, tmp_path_factory) -> Path:
    """Digits with BAD_ROWS corrupted, ingested and validated: three rows in quarantine."""
    env = copy_env(template_env.root.parent, tmp_path_factory.mktemp("quarantined") / "env")
    ingest_digits(env, publish_frame(env, corrupt(digits_frame(env), BAD_ROWS), "corrupted"))
    validate_digits(env)
    return env.root.parent


@pytest.fixture
def quarantined(quarantined_base, tmp_path) -> Env:
    return copy_env(quarantined_base, tmp_path / "env")


@pytest.fixture(autouse=True)
def _reports_in_tmp(tmp_path, monkeypatch) -> Path:
    """A refusal's report goes to a fresh temporary directory: keep those under tmp_path."""
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(reports))
    return reports


# -- helpers ------------------------------------------------------------------------------------


def _one_line(result: CliResult) -> str:
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1, result.err  # one clear line, no traceback
    return lines[0]


def _refused(cli, env: Env, *args: str, check: str, code: int = 1) -> str:
    """Runs ``aegis ARGS``; asserts the exit code, the check, an untouched workspace."""
    before = snapshot(env.root)
    result = cli("--workspace", env.root, *args)
    assert result.code == code, result.err + result.out
    line = _one_line(result)
    assert f"{check}:" in line, line
    assert snapshot(env.root) == before
    return line


def _report_of(line: str) -> Path:
    match = re.search(r"report: (\S+\.html)", line)
    assert match, line
    return Path(match.group(1))


def _lock(env: Env) -> dict:
    return yaml.safe_load((env.root / "dvc.lock").read_text())["stages"]["validate@digits"]


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _cached(root: Path, md5: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _pushed(root: Path, md5: str) -> Path:
    return root / ".aegis" / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("AEGIS_WORKSPACE", None)
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


# -- success ------------------------------------------------------------------------------------


def test_validate_quarantines_writes_commits_pushes_and_audits(cli, env):
    source = publish_frame(env, corrupt(digits_frame(env), BAD_ROWS), "corrupted")
    digest = dataset_digest((source / MANIFEST_NAME).read_bytes())
    assert cli("--workspace", env.root, "ingest", source, "--name", "digits").code == 0

    result = cli("--workspace", env.root, "validate", "digits", "--key", env.operator_key)

    assert result.code == 0, result.err
    assert "validation of 'digits'" in result.out
    assert "3 of 1797" in result.out and f"3 x {BETWEEN}" in result.out
    assert "first validated version" in result.out
    root = env.root
    paths = {
        "quarantine": root / "quarantine" / "digits.parquet",
        "result": root / "validation" / "digits" / "result.json",
        "report": root / "validation" / "digits" / "report.html",
        "profile": root / ".aegis" / "profiles" / "digits" / f"{digest[7:]}.json",
    }
    for path in paths.values():
        assert path.is_file(), path
    assert str(paths["report"]) in result.out

    quarantine = pd.read_parquet(paths["quarantine"])
    assert quarantine["_aegis_row"].tolist() == BAD_ROWS
    assert set(quarantine["_aegis_reasons"]) == {BETWEEN}

    saved = json.loads(paths["result"].read_text())
    assert saved["dataset"] == digest and saved["success"] is True
    assert saved["suite"] == "digits"
    assert saved["suite_digest"] == sha256_file(root / "expectations" / "digits.json")
    assert saved["expectations"] == {"evaluated": 198, "passed": 197, "failed": 1}
    assert saved["rows"]["quarantined"] == 3 and saved["rows"]["total"] == 1797
    assert saved["quarantine_reasons"] == {BETWEEN: 3}
    assert saved["report"] == "validation/digits/report.html"
    assert "Validation of <code>digits</code>" in paths["report"].read_text()

    # audited: the digest of result.json (what a later release cites) and of the profile
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "validate.passed"
    assert entry.actor == env.ledger().trust.get("ops").key_id
    assert entry.subjects == {"dataset": digest, "validation": sha256_file(paths["result"])}
    assert entry.details["profile_digest"] == sha256_file(paths["profile"])
    assert entry.details["quarantined"] == 3
    assert cli("--workspace", root, "audit", "verify").code == 0

    # the stage is recorded: dvc.lock outs match the files; cached outs are in cache and remote
    lock = _lock(env)
    outs = {o["path"]: o["md5"] for o in lock["outs"]}
    assert set(outs) == {
        "quarantine/digits.parquet",
        "validation/digits/report.html",
        "validation/digits/result.json",
    }
    for rel, md5 in outs.items():
        assert _md5(root / rel) == md5, rel
    for rel in ("quarantine/digits.parquet", "validation/digits/report.html"):
        assert _cached(root, outs[rel]).is_file(), rel
        assert _pushed(root, outs[rel]).is_file(), rel
    assert {d["path"] for d in lock["deps"]} == {"data/digits", "expectations/digits.json"}

    # the quarantine is DVC's (git-ignored), the evidence is in git, and nothing is left over
    ignored = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "quarantine/digits.parquet"], capture_output=True
    )
    assert ignored.returncode == 0
    tracked = subprocess.run(
        ["git", "-C", str(root), "ls-files"], capture_output=True, text=True
    ).stdout.split()
    profile = str(paths["profile"].relative_to(root))
    for rel in ("dvc.lock", "validation/digits/result.json", profile):
        assert rel in tracked, rel
    assert git_status(root) == ""
    status = _dvc(root, "status", "validate@digits")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr


def test_validate_json_output(cli, ingested):
    result = cli("--workspace", ingested.root, "--json", "validate", "digits")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["success"] is True and summary["rows"]["quarantined"] == 0
    saved = json.loads((ingested.root / "validation" / "digits" / "result.json").read_text())
    assert summary == saved
    # unattended: the pipeline key is the actor
    assert ingested.ws.audit().entries()[-1].actor == ingested.ws.meta()["pipeline_key"]


# -- refusals ------------------------------------------------------------------------------------


def _missing_column(f: pd.DataFrame) -> pd.DataFrame:
    return f.drop(columns=[BAD_PIXEL])


def _extra_text_column(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(note=[f"row {i}" for i in range(len(f))])  # free text, unique per row


def _string_column(f: pd.DataFrame) -> pd.DataFrame:
    return f.assign(**{BAD_PIXEL: f[BAD_PIXEL].astype(str)})


def _too_few_rows(f: pd.DataFrame) -> pd.DataFrame:
    return f.head(100)


@pytest.mark.parametrize(
    ("alter", "failure"),
    [
        (_missing_column, "table_columns_to_match_ordered_list"),
        (_extra_text_column, "table_columns_to_match_ordered_list"),
        (_string_column, f"column_values_to_be_in_type_list({BAD_PIXEL})"),
        (_too_few_rows, "table_row_count_to_be_between"),
    ],
    ids=["missing-column", "extra-text-column", "string-dtype", "too-few-rows"],
)
def test_table_level_failure_is_refused(cli, env, _reports_in_tmp, alter, failure):
    """`aegis ingest` does not validate: the broken version is stored, validation refuses it."""
    source = publish_frame(env, alter(digits_frame(env)), "broken")
    assert cli("--workspace", env.root, "ingest", source, "--name", "digits").code == 0

    line = _refused(cli, env, "validate", "digits", check="validation")

    assert line.startswith("refused: validation:")
    assert "table-level check(s) failed" in line
    report = _report_of(line)
    assert report.is_relative_to(_reports_in_tmp)  # outside the workspace
    html = report.read_text()
    assert "Table-level failures" in html and "FAILED" in html
    assert f"<li><code>{failure}" in html  # the message shows the first three; the report all
    assert not (env.root / "validation").exists() and not (env.root / "quarantine").exists()
    assert env.ws.audit().entries()[-1].action == "ingest.accepted"


def test_quarantine_share_over_the_limit_is_refused(cli, env):
    rows = list(range(0, 1797, 19))  # 95 rows: 5.3% > validate.max_quarantine_fraction (5%)
    source = publish_frame(env, corrupt(digits_frame(env), rows), "corrupted")
    assert cli("--workspace", env.root, "ingest", source, "--name", "digits").code == 0

    line = _refused(cli, env, "validate", "digits", check="validation")

    assert f"{len(rows)} of 1797 rows" in line
    assert "validate.max_quarantine_fraction" in line
    assert "table-level" not in line


def test_drift_gate_fires_on_a_shift_and_not_on_a_resample(cli, validated):
    env = validated
    v1 = json.loads((env.root / "validation" / "digits" / "result.json").read_text())["dataset"]
    frame = digits_frame(env)

    shifted = publish_frame(env, skewed(frame), "shifted")  # digits 0-4 only, newer
    assert cli("--workspace", env.root, "ingest", shifted, "--name", "digits").code == 0
    line = _refused(cli, env, "validate", "digits", check="drift")
    assert line.startswith("refused: drift:")
    column = re.search(r"PSI of '([^']+)' is ([0-9.]+)", line)
    assert column, line
    assert column.group(1) in frame.columns and float(column.group(2)) > 0.25
    assert "validate.max_psi (0.25)" in line and v1[:19] in line
    assert "Drift (PSI) against" in _report_of(line).read_text()

    sample = publish_frame(env, resample(frame), "resample")  # same rows, newer
    assert cli("--workspace", env.root, "ingest", sample, "--name", "digits").code == 0
    ok = cli("--workspace", env.root, "--json", "validate", "digits")
    assert ok.code == 0, ok.err
    drift = json.loads(ok.out)["drift"]
    assert drift["reference"] == v1  # the last accepted version, not the refused one
    assert drift["passed"] is True
    assert max([*drift["features"].values(), drift["label"]]) < 0.1
    assert git_status(env.root) == ""


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.unlink()  # a new file: never write through a link into the DVC cache
    path.write_bytes(bytes(data))


def test_tampered_stored_dataset_is_refused(cli, ingested):
    _tamper(ingested.root / "data" / "digits" / "digits.parquet")
    line = _refused(cli, ingested, "validate", "digits", check="integrity")
    assert "digits.parquet" in line


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_damaged_reference_profile_is_refused(cli, validated, damage):
    env = validated
    (profile,) = (env.root / ".aegis" / "profiles" / "digits").glob("*.json")
    if damage == "altered":
        data = json.loads(profile.read_text())
        data["columns"]["label"]["shares"] = [0.1] * 10  # a plausible, different reference
        profile.write_text(json.dumps(data, sort_keys=True))
    else:
        profile.unlink()
    newer = publish_frame(env, resample(digits_frame(env)), "v2")
    assert cli("--workspace", env.root, "ingest", newer, "--name", "digits").code == 0

    line = _refused(cli, env, "validate", "digits", check="drift")
    verb = "was" if damage == "altered" else "is"
    assert f"reference profile of sha256:{profile.stem[:12]} {verb} {damage}" in line


def test_dataset_not_in_pipeline_is_a_usage_error(cli, ingested):
    for args in (["validate", "breast_cancer"], ["stage", "validate", "--name", "breast_cancer"]):
        line = _refused(cli, ingested, *args, check="error", code=2)
        assert "pipeline.datasets" in line


def test_dataset_never_ingested_is_a_usage_error(cli, env):
    line = _refused(cli, env, "validate", "digits", check="error", code=2)
    assert "has not been ingested" in line


def test_tampered_audit_log_blocks_validation(cli, validated):
    log = validated.root / ".aegis" / "audit" / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-2] + lines[-1:]) + "\n")  # drop the ingest entry
    _refused(cli, validated, "validate", "digits", check="audit")


# -- the DVC stage ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_dvc_repro_runs_the_validate_stage(ingested):
    root = ingested.root
    proc = _dvc(root, "repro", "validate@digits")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Running stage 'validate@digits'" in proc.stdout
    for rel in (
        "quarantine/digits.parquet",
        "validation/digits/result.json",
        "validation/digits/report.html",
    ):
        assert (root / rel).is_file(), rel
    lock = _lock(ingested)
    assert lock["cmd"] == "aegis stage validate --name digits"
    for out in lock["outs"]:
        assert _md5(root / out["path"]) == out["md5"], out["path"]
    saved = json.loads((root / "validation" / "digits" / "result.json").read_text())
    entry = ingested.ws.audit().entries()[-1]
    assert entry.action == "validate.passed"
    assert entry.subjects["validation"] == sha256_file(root / "validation/digits/result.json")
    assert entry.subjects["dataset"] == saved["dataset"]
    assert (root / ".aegis" / "profiles" / "digits" / f"{saved['dataset'][7:]}.json").is_file()
    status = _dvc(root, "status", "validate@digits")
    assert "up to date" in status.stdout, status.stdout


def test_stage_validate_command_in_a_fresh_checkout(cli, ingested):
    """The command `dvc repro` runs; a clone has no staging directory yet."""
    shutil.rmtree(ingested.root / ".aegis" / "staging", ignore_errors=True)

    result = cli("--workspace", ingested.root, "stage", "validate", "--name", "digits")

    assert result.code == 0, result.err
    assert "validated digits: 0 row(s) quarantined" in result.out
    assert (ingested.root / "quarantine" / "digits.parquet").is_file()
    assert (ingested.root / "validation" / "digits" / "report.html").is_file()
    entry = ingested.ws.audit().entries()[-1]
    assert entry.action == "validate.passed"
    assert entry.actor == ingested.ws.meta()["pipeline_key"]
    assert entry.subjects["validation"] == sha256_file(
        ingested.root / "validation" / "digits" / "result.json"
    )


# -- aegis quarantine ---------------------------------------------------------------------------


def test_quarantine_list_and_show(cli, quarantined):
    root = quarantined.root
    listed = cli("--workspace", root, "quarantine", "list")
    assert listed.code == 0, listed.err
    assert "digits" in listed.out and BETWEEN in listed.out

    (summary,) = json.loads(cli("--workspace", root, "quarantine", "list", "--json").out)
    saved = json.loads((root / "validation" / "digits" / "result.json").read_text())
    assert summary == {
        "name": "digits",
        "dataset_digest": saved["dataset"],
        "rows": 3,
        "released": 0,
        "reasons": {BETWEEN: 3},
    }

    shown = cli("--workspace", root, "quarantine", "show", "digits")
    assert shown.code == 0, shown.err
    assert "(3 rows)" in shown.out
    for row in BAD_ROWS:
        assert re.search(rf"\b{row}\b.*\bno\b.*{re.escape(BETWEEN)}", shown.out), shown.out

    records = json.loads(cli("--workspace", root, "quarantine", "show", "digits", "--json").out)
    assert records == [{"row": r, "reasons": [BETWEEN], "released": False} for r in BAD_ROWS]
    with_values = cli("--workspace", root, "quarantine", "show", "digits", "--json", "--values")
    assert all(r["values"][BAD_PIXEL] == 99.0 for r in json.loads(with_values.out))
    limited = cli("--workspace", root, "quarantine", "show", "digits", "--limit", "1", "--json")
    assert len(json.loads(limited.out)) == 3  # JSON lists every row; --limit is the table's


def test_quarantine_release_is_an_operator_decision(cli, quarantined):
    env = quarantined
    args = ("quarantine", "release", "digits", "--rows", "3,500", "--reason", "checked by hand")

    line = _refused(cli, env, *args, check="error", code=2)  # no key at all
    assert "--key" in line
    line = _refused(cli, env, *args, "--key", env.supplier_key, check="signer")
    assert "supplier" in line
    _refused(cli, env, "quarantine", "release", "digits", "--rows", "3,x", "--reason", "r",
             "--key", env.operator_key, check="error", code=2)  # fmt: skip
    _refused(cli, env, "quarantine", "release", "digits", "--rows", "4", "--reason", "r",
             "--key", env.operator_key, check="error", code=2)  # fmt: skip

    result = cli("--workspace", env.root, *args, "--key", env.operator_key)

    assert result.code == 0, result.err
    assert "released 2 row(s) of 'digits': [3, 500]" in result.out
    (summary,) = json.loads(cli("--workspace", env.root, "quarantine", "list", "--json").out)
    assert summary["released"] == 2
    records = json.loads(cli("--workspace", env.root, "quarantine", "show", "digits", "--json").out)
    assert {r["row"]: r["released"] for r in records} == {3: True, 500: True, 1200: False}
    entry = env.ws.audit().entries()[-1]
    assert entry.action == "quarantine.release"
    assert entry.actor == env.ledger().trust.get("ops").key_id
    assert entry.details["rows"] == [3, 500] and entry.details["reason"] == "checked by hand"
    assert git_status(env.root) == ""
    _refused(cli, env, *args, "--key", env.operator_key, check="error", code=2)  # already out


def test_quarantine_of_a_dataset_never_validated_is_a_usage_error(cli, ingested):
    _refused(cli, ingested, "quarantine", "show", "digits", check="error", code=2)
    listed = cli("--workspace", ingested.root, "quarantine", "list", "--json")
    assert listed.code == 0 and json.loads(listed.out) == []


def test_quarantine_show_json_is_strict_json_with_null_values(cli, quarantined):
    path = quarantined.root / "quarantine" / "digits.parquet"
    table = pd.read_parquet(path)
    table.loc[0, "pixel_2_2"] = float("nan")  # as for a row quarantined by not_null(pixel_2_2)
    table.to_parquet(path, index=False)

    shown = cli("--workspace", quarantined.root, "quarantine", "show", "digits", "--json",
                "--values")  # fmt: skip

    assert shown.code == 0, shown.err

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    records = json.loads(shown.out, parse_constant=refuse)
    assert records[0]["values"]["pixel_2_2"] is None
