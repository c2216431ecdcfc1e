"""``build_release``: the signed directory, its commit, tag and audit, and what it refuses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import snapshot

from aegis import vcs
from aegis.config import SignParams, override_params
from aegis.crypto.bundle import hash_directory
from aegis.crypto.signing import require_sigstore_identity
from aegis.errors import ConfigError, RefusedError
from aegis.registry.journal import reconcile
from aegis.registry.release import BUNDLE, build_release, evidence_digest, signer_for
from aegis.registry.tags import read_registry
from aegis.registry.targets import parse_target
from aegis.registry.verify import open_release
from aegis.train.checkpoint import model_digest
from aegis.workspace import Workspace


def test_released_env_has_two_signed_releases(released_env):
    env = released_env
    state = read_registry(env.ledger(), env.model)
    assert [v.version for v in state.versions] == ["v1.0.0", "v2.0.0"]
    d1, d2 = env.release_dir(1), env.release_dir(2)
    files = sorted(str(p.relative_to(d1)) for p in d1.rglob("*") if p.is_file())
    assert files == sorted([
        "model/model.safetensors", "model/config.json", "model/metadata.json", "metrics.json",
        "report.html", "validation.json", "dataset.json", "params.yaml", "sbom.cdx.json",
        "release.json", BUNDLE,
    ])  # fmt: skip
    info1 = json.loads((d1 / "release.json").read_text())
    info2 = json.loads((d2 / "release.json").read_text())
    assert info1["model_digest"] == model_digest(d1 / "model") != info2["model_digest"]
    created = [e for e in env.ws.audit().entries() if e.action == "release.created"]
    assert [e.details["version"] for e in created] == ["v1.0.0", "v2.0.0"]
    assert created[0].subjects["evidence"] == evidence_digest(hash_directory(d1, ignored=[BUNDLE]))
    assert vcs.git(env.root, "status", "--porcelain").strip() == ""


# -- refusals and failures leave nothing behind ---------------------------------------------------


def _state(env) -> tuple:
    return (
        snapshot_without_audit(env.root),
        vcs.head_commit(env.root),
        vcs.git(env.root, "tag", "-l").split(),
    )


def snapshot_without_audit(root: Path) -> dict[str, str]:
    """The workspace minus the audit log and content-addressed stores (unreferenced objects)."""
    skip = ("/.aegis/audit/", "/.dvc/cache/", "/.git/objects/", "/.git/index", "/.git/hooks/")
    return {k: v for k, v in snapshot(root).items() if not k.startswith(skip)}


def _build(env):
    actor, _ = env.ledger().actor(None)
    return build_release(env.ledger(), "digits", actor=actor)


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _build_refused(env, fragment: str) -> None:
    before = snapshot(env.root)
    with pytest.raises(RefusedError) as exc:
        _build(env)
    assert exc.value.check == "release" and fragment in str(exc.value)
    assert snapshot(env.root) == before


def test_refuses_metrics_of_another_model(released_env):
    metrics = released_env.root / "reports" / "digits" / "metrics.json"
    _edit_json(metrics, lambda m: m.update(model="sha256:" + "0" * 64))
    _build_refused(released_env, "evaluate again")


def test_refuses_metrics_not_audited(released_env):
    """Same model digest, but not the metrics the evaluate stage audited."""
    metrics = released_env.root / "reports" / "digits" / "metrics.json"
    _edit_json(metrics, lambda m: m.update(clean_acc=1.0))
    _build_refused(released_env, "no evaluate.done")


def test_refuses_a_validation_result_not_audited(released_env):
    """The release signs result.json as it is: an edited one (another suite) is refused."""
    result = released_env.root / "validation" / "digits" / "result.json"
    # claims a suite that was never run
    _edit_json(result, lambda r: r.update(suite_digest="sha256:" + "0" * 64))
    _build_refused(released_env, "not the audited validation")


def test_refuses_without_a_model(released_env):
    env = released_env
    shutil.rmtree(env.root / "models" / "digits")
    with pytest.raises(RefusedError) as exc:
        _build(env)
    assert exc.value.check == "release" and "train first" in str(exc.value)


def test_failed_commit_leaves_no_half_release(released_env):
    env = released_env
    hook = env.root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'refused by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    before = _state(env)
    with pytest.raises(ConfigError, match="git commit failed"):
        _build(env)
    after = _state(env)
    changed = {k for k in set(after[0]) | set(before[0]) if after[0].get(k) != before[0].get(k)}
    assert not changed, sorted(changed)
    assert after == before  # no directory, .dvc file, commit or tag; scratch removed
    assert not env.release_dir(3).exists()
    assert [e.action for e in env.ws.audit().entries()[-2:]] == [
        "release.intent",
        "release.aborted",
    ]
    hook.unlink()
    assert _build(env).tag == "digits-model@v3.0.0"  # the number was never used


def test_sigstore_needs_identity_and_issuer(released_env):
    env = released_env
    override_params(env.ws.params_path, {"sign": {"method": "sigstore"}})
    before = _state(env)
    with pytest.raises(ConfigError, match=r"sign\.identity and sign\.oidc_issuer"):
        _build(env)
    assert _state(env) == before
    with pytest.raises(ConfigError, match=r"sign\.oidc_issuer"):
        signer_for(SignParams(method="sigstore", identity="ci@example.com"), env.ledger())
    assert require_sigstore_identity("ci@example.com", "https://x") == (
        "ci@example.com",
        "https://x",
    )


def test_sigstore_bundle_needs_sigstore_method(released_env, tmp_path):
    """A keyless bundle is only accepted when the workspace is configured for Sigstore."""
    from aegis.registry.verify import expected_signer

    bundle = tmp_path / BUNDLE
    bundle.write_text(json.dumps({"verificationMaterial": {"certificate": {"rawBytes": "x"}}}))
    with pytest.raises(RefusedError) as exc:
        expected_signer(released_env.ledger(), bundle)
    assert exc.value.check == "signer"
    override_params(released_env.ws.params_path, {"sign": {"method": "sigstore"}})
    with pytest.raises(ConfigError, match=r"sign\.identity"):
        expected_signer(released_env.ledger(), bundle)


@pytest.mark.parametrize(
    "step", ["release.intent", "release.commit", "release.audit", "release.tag"]
)
def test_crash_then_reconcile(released_env, step, cli):
    """Killed at each step: reconcile completes it (tag made) or rolls it back (no tag).

    ``release.created`` is audited before the tag, so a completed release always
    verifies; a release aborted after its audit entry (``release.audit``) does not,
    not even by its directory.
    """
    env = released_env
    code = (
        "import sys; from aegis.workspace import Workspace; from aegis.ledger import Ledger; "
        "from aegis.registry.release import build_release; ledger = Ledger.load(Workspace("
        "__import__('pathlib').Path(sys.argv[1]))); "
        "build_release(ledger, 'digits', actor=ledger.actor(None)[0])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(env.root)],
        env={**os.environ, "AEGIS_CRASH_AT": step},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    notes = reconcile(env.ledger())
    tags = vcs.git(env.root, "tag", "-l").split()
    if step == "release.tag":
        assert notes and "completed" in notes[0]
        assert "digits-model@v3.0.0" in tags
        assert open_release(env.ledger(), parse_target("digits-model@v3")).version == "v3.0.0"
    else:
        assert notes and "rolled back" in notes[0]
        assert "digits-model@v3.0.0" not in tags
        assert cli("--workspace", env.root, "verify", "digits-model@v3").code == 1
        # nothing of the interrupted release is left: no directory, .dvc file or ignore line
        assert not env.release_dir(3).exists()
        assert not env.release_dir(3).with_name("v3.dvc").exists()
        assert "/v3" not in (env.release_dir(1).parent / ".gitignore").read_text().split()
        assert vcs.git(env.root, "status", "--porcelain").strip() == ""
        if step == "release.audit":
            created = [e for e in env.ws.audit().entries() if e.action == "release.created"]
            assert created[-1].details["version"] == "v3.0.0"
            assert env.ledger().release("digits-model", "v3.0.0").aborted
        assert _build(env).tag == "digits-model@v3.0.0"  # the number is free again
    assert cli("--workspace", env.root, "verify", "digits-model@v2").code == 0


# -- the model name, the order of audit and tag, the lock, the bytes released -------------------


def test_model_name_with_a_path_is_refused_before_anything_is_written(released_env, monkeypatch):
    env = released_env
    bad = {"train": {"model_name": "../../x"}}
    with pytest.raises(ConfigError, match=r"train\.model_name"):
        override_params(env.ws.params_path, bad)
    # the backstop, should a name reach build_release unvalidated
    import aegis.pipeline.train as stage

    before = _state(env)
    outside = env.root.parent / "x"
    monkeypatch.setattr(stage, "registry_name", lambda ws, name: "../../x")
    with pytest.raises(RefusedError) as exc:
        _build(env)
    assert exc.value.check == "path"
    assert not outside.exists() and _state(env) == before
    monkeypatch.setattr(stage, "registry_name", lambda ws, name: "a.b")
    with pytest.raises(RefusedError) as exc:
        _build(env)
    assert exc.value.check == "release" and "train.model_name" in str(exc.value)


def test_release_is_audited_before_it_is_tagged(released_env):
    env = released_env
    release = _build(env)
    actions = [e.action for e in env.ws.audit().entries()[-3:]]
    assert actions == ["release.intent", "release.created", "release.done"]
    created = env.ws.audit().entries()[-2]
    assert created.details["intent"] == env.ws.audit().entries()[-3].seq
    assert release.tag in vcs.git(env.root, "tag", "-l").split()


def _lock_is_free(ws) -> bool:
    import fcntl

    fd = os.open(ws.aegis_dir / "workspace.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _spy_signing(monkeypatch, after=None) -> list[bool]:
    """Wraps the real signer; records whether the workspace lock was free while signing."""
    import aegis.registry.release as release_module

    real = release_module.sign_directory
    seen: list[bool] = []

    def spy(directory, *, bundle_name, signer):
        ws = Workspace(directory.parents[2])  # <ws>/.aegis/staging/<scratch>
        seen.append(_lock_is_free(ws))
        result = real(directory, bundle_name=bundle_name, signer=signer)
        if after:
            after(ws)
        return result

    monkeypatch.setattr(release_module, "sign_directory", spy)
    return seen


def test_signing_runs_outside_the_workspace_lock(released_env, monkeypatch):
    env = released_env
    seen = _spy_signing(monkeypatch)
    assert _build(env).tag == "digits-model@v3.0.0"
    assert seen == [True]


def test_version_taken_while_signing_is_refused_cleanly(released_env, monkeypatch):
    env = released_env

    def another_release_takes_v3(ws):
        (ws.root / "releases" / "digits-model" / "v3").mkdir()

    _spy_signing(monkeypatch, after=another_release_takes_v3)
    head, tags = vcs.head_commit(env.root), vcs.git(env.root, "tag", "-l").split()
    with pytest.raises(RefusedError) as exc:
        _build(env)
    assert exc.value.check == "registry"
    assert "another release took v3.0.0 meanwhile; run it again" in str(exc.value)
    assert vcs.head_commit(env.root) == head and vcs.git(env.root, "tag", "-l").split() == tags
    assert list(env.ws.staging_dir.iterdir()) == []  # the signed scratch copy is gone
    assert [e.action for e in env.ws.audit().entries()[-2:]] == [
        "release.intent",
        "release.aborted",
    ]


def test_release_holds_the_bytes_that_were_checked(released_env, tmp_path):
    from aegis.registry.release import _assemble, _gather

    env = released_env
    facts = _gather(env.ledger(), "digits")
    metrics = env.root / "reports" / "digits" / "metrics.json"
    checked = metrics.read_bytes()
    metrics.unlink()
    metrics.write_bytes(checked.replace(b'"clean_acc": 0.', b'"clean_acc": 1.'))
    scratch = tmp_path / "a"
    scratch.mkdir()
    _assemble(env.ws, facts, scratch)
    assert (scratch / "metrics.json").read_bytes() == checked

    weights = env.root / "models" / "digits" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.unlink()
    weights.write_bytes(bytes(data))
    scratch = tmp_path / "b"
    scratch.mkdir()
    with pytest.raises(RefusedError) as exc:
        _assemble(env.ws, facts, scratch)
    assert exc.value.check == "release" and "changed while" in str(exc.value)
