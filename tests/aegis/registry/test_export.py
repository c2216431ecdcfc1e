"""``aegis export``: a verified copy for downstream users, checkable with model_signing alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from release_helpers import V1

from aegis.errors import RefusedError, UsageError
from aegis.registry.export import PUBLIC_KEY, README, export_release
from aegis.registry.targets import parse_target

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"


def _documented_command(out: Path) -> list[str]:
    """The command VERIFY.md documents, exactly as written there."""
    text = (out / README).read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("model_signing verify")]
    return line.split()


def _run_documented(out: Path) -> subprocess.CompletedProcess:
    cmd = _documented_command(out)
    return subprocess.run(
        [str(MODEL_SIGNING), *cmd[1:]], cwd=out, capture_output=True, text=True, timeout=120
    )


def test_export_verifies_with_the_documented_model_signing_command(released_env, cli, tmp_path):
    env = released_env
    out = tmp_path / "export"
    result = cli("--workspace", env.root, "export", "digits-model@v1", out)
    assert result.code == 0, result.err
    assert f"exported {V1} to {out}" in result.out
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    release = {str(p.relative_to(env.release_dir(1))) for p in env.release_dir(1).rglob("*")}
    assert names == {n for n in release if (env.release_dir(1) / n).is_file()} | {
        PUBLIC_KEY,
        README,
    }
    assert (out / PUBLIC_KEY).read_text() == env.ledger().pipeline_entry().public_key
    assert env.ledger().pipeline_entry().key_id in (out / README).read_text()

    proc = _run_documented(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # the same command refuses a changed byte, and a file slipped in (git paths too)
    weights = out / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    assert _run_documented(out).returncode != 0
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    assert _run_documented(out).returncode == 0
    (out / ".gitignore").write_text("model/\n")
    assert _run_documented(out).returncode != 0


def test_export_by_directory_and_json(released_env, cli, tmp_path):
    env = released_env
    out = tmp_path / "empty"
    out.mkdir()  # an existing empty directory is fine
    result = cli("--workspace", env.root, "export", env.release_dir(2), out, "--json")
    assert result.code == 0, result.err
    printed = json.loads(result.out)
    assert printed["release"] == "digits-model@v2.0.0"
    assert printed["command"].startswith("model_signing verify key . --signature release.sig")


def test_export_refuses_a_non_empty_directory(released_env, cli, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("--workspace", released_env.root, "export", V1, out)
    assert result.code == 2, result.out + result.err
    assert "not empty" in result.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(UsageError):
        export_release(released_env.ledger(), parse_target(V1), out)


def test_export_refuses_a_tampered_release(released_env, cli, tmp_path):
    env = released_env
    metrics = env.release_dir(1) / "metrics.json"
    text = metrics.read_text()
    metrics.unlink()
    metrics.write_text(text.replace('"clean_acc": 0.', '"clean_acc": 1.'))
    out = tmp_path / "export"
    result = cli("--workspace", env.root, "export", V1, out)
    assert result.code == 1, result.out + result.err
    assert result.err.startswith("refused: integrity:") and "metrics.json" in result.err
    assert not out.exists()
    with pytest.raises(RefusedError):
        export_release(env.ledger(), parse_target(V1), out)
    assert not out.exists()


def test_export_of_a_missing_directory_fetches_it(released_env, tmp_path):
    env = released_env
    shutil.rmtree(env.release_dir(1))
    result = export_release(env.ledger(), parse_target(V1), tmp_path / "x")
    assert result.release == V1 and (tmp_path / "x" / "release.json").is_file()
    assert _run_documented(tmp_path / "x").returncode == 0


def test_export_refuses_if_the_signer_left_the_trust_store(released_env, monkeypatch, tmp_path):
    """No ``assert`` in product code: a real refusal, and nothing left behind."""
    import aegis.registry.export as export_module
    from aegis.crypto.truststore import TrustStore

    real = export_module.open_release

    def verified_then_key_gone(ws, target):
        verified = real(ws, target)
        monkeypatch.setattr(TrustStore, "by_key_id", lambda self, key_id: None)
        return verified

    monkeypatch.setattr(export_module, "open_release", verified_then_key_gone)
    out = tmp_path / "export"
    with pytest.raises(RefusedError) as exc:
        export_release(released_env.ledger(), parse_target(V1), out)
    assert exc.value.check == "signer"
    assert not out.exists()
