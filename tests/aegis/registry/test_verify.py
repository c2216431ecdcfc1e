"""``verify_release`` and ``aegis verify``: a good release passes, every tampering is named.

Each tampered case runs through the library and the CLI (exit 1, one stderr line naming
the check). Real components: the session's released workspace (release_helpers), real
signatures, the real trust store and audit log.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import pipeline_key
from release_helpers import V1

from aegis.crypto.keys import generate_key
from aegis.crypto.signing import KeySigner, sign_directory
from aegis.crypto.truststore import TrustStore
from aegis.errors import RefusedError
from aegis.registry.release import BUNDLE
from aegis.registry.targets import parse_target
from aegis.registry.verify import load_release_model, open_release, verify_release

SIGNED = [
    "model/model.safetensors", "model/config.json", "model/metadata.json", "metrics.json",
    "report.html", "validation.json", "dataset.json", "params.yaml", "sbom.cdx.json",
    "release.json",
]  # fmt: skip


def _refused(env, cli, tmp_path, check: str, target: str = V1) -> str:
    """Both ways: verify_release/open_release raise ``check``; the CLI exits 1 naming it."""
    with pytest.raises(RefusedError) as exc:
        open_release(env.ledger(), parse_target(target))
    assert exc.value.check == check, str(exc.value)
    result = cli("--workspace", env.root, "verify", target)
    assert result.code == 1, result.out + result.err
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"refused: {check}:"), result.err
    assert "Traceback" not in result.err
    return lines[0]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.unlink()  # a new file: never write through a link into the DVC cache
    path.write_bytes(bytes(data))


# -- good releases -------------------------------------------------------------------------------


def test_verify_good_release_by_target_and_directory(released_env, cli):
    env = released_env
    verified = open_release(env.ledger(), parse_target("digits-model@v1"))
    assert (verified.model_name, verified.version) == ("digits-model", "v1.0.0")
    assert verified.directory == env.release_dir(1).resolve()
    assert sorted(verified.files) == sorted(SIGNED)
    assert verified.signer_owner == "aegis"
    assert verified.metrics["model"] == verified.model_digest
    assert load_release_model(verified).digest == verified.model_digest
    for arg in (
        "digits-model@v1",
        "digits-model@v1.0.0",
        env.release_dir(1),
        "releases/digits-model/v1",
    ):
        result = cli("--workspace", env.root, "verify", arg, cwd=env.root)
        assert result.code == 0, result.err
        assert "verified digits-model@v1.0.0" in result.out
        assert verified.evidence_digest in result.out and verified.model_digest in result.out
    as_json = cli("--workspace", env.root, "verify", "digits-model@v2", "--json")
    assert as_json.code == 0, as_json.err
    assert json.loads(as_json.out)["release"] == "digits-model@v2.0.0"


@pytest.mark.parametrize(
    "bad", ["digits-model", "digits-model@1", "digits-model@v1.2.0", "@v1", "x@v0"]
)
def test_bad_target_syntax_exits_2(released_env, cli, bad):
    result = cli("--workspace", released_env.root, "verify", bad)
    assert result.code == 2, result.out + result.err
    assert "a target is NAME@vN" in result.err


def test_unregistered_version_is_refused(released_env, cli, tmp_path):
    _refused(released_env, cli, tmp_path, "registry", target="digits-model@v9")


def test_missing_directory_is_checked_out_from_dvc(released_env):
    env = released_env
    shutil.rmtree(env.release_dir(1))
    verified = open_release(env.ledger(), parse_target(V1))
    assert verified.directory.is_dir() and verified.version == "v1.0.0"


def test_missing_directory_and_cache_is_pulled_from_the_remote(released_env):
    from aegis.registry.release import Release, push_release

    env = released_env
    info = json.loads((env.release_dir(1) / "release.json").read_text())
    push_release(env.ws, Release(
        model_name=env.model, version="v1.0.0", directory="releases/digits-model/v1",
        model_digest=info["model_digest"], evidence_digest="", dataset_digest="", commit="",
        tag=V1,
    ))  # fmt: skip
    shutil.rmtree(env.release_dir(1))
    shutil.rmtree(env.root / ".dvc" / "cache")
    verified = open_release(env.ledger(), parse_target(V1))
    assert verified.model_digest == info["model_digest"]


# -- the tamper matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNED)
def test_changed_byte_in_any_file(released_env, cli, tmp_path, name):
    _flip(released_env.release_dir(1) / name)
    assert name in _refused(released_env, cli, tmp_path, "integrity")


def test_added_file(released_env, cli, tmp_path):
    (released_env.release_dir(1) / "extra.txt").write_text("hello")
    assert "extra.txt" in _refused(released_env, cli, tmp_path, "file-set")


def test_added_git_file_is_not_ignored(released_env, cli, tmp_path):
    (released_env.release_dir(1) / ".gitattributes").write_text("* -text\n")
    assert ".gitattributes" in _refused(released_env, cli, tmp_path, "file-set")


def test_removed_file(released_env, cli, tmp_path):
    (released_env.release_dir(1) / "sbom.cdx.json").unlink()
    assert "sbom.cdx.json" in _refused(released_env, cli, tmp_path, "file-set")


def test_missing_bundle(released_env, cli, tmp_path):
    (released_env.release_dir(1) / BUNDLE).unlink()
    _refused(released_env, cli, tmp_path, "bundle")


def test_truncated_bundle(released_env, cli, tmp_path):
    bundle = released_env.release_dir(1) / BUNDLE
    data = bundle.read_bytes()
    bundle.unlink()
    bundle.write_bytes(data[: len(data) // 2])
    _refused(released_env, cli, tmp_path, "bundle")


def _resign(directory: Path, key_path: Path) -> None:
    (directory / BUNDLE).unlink()
    sign_directory(directory, bundle_name=BUNDLE, signer=KeySigner(key_path))


def test_signed_by_an_operator_key(released_env, cli, tmp_path):
    _resign(released_env.release_dir(1), released_env.operator_key)
    assert "role operator, not pipeline" in _refused(released_env, cli, tmp_path, "signer")


def test_signed_by_an_unknown_key(released_env, cli, tmp_path):
    generate_key(tmp_path / "stranger.pem")
    _resign(released_env.release_dir(1), tmp_path / "stranger.pem")
    assert "unknown key" in _refused(released_env, cli, tmp_path, "signer")


def test_forged_key_hint(released_env, cli, tmp_path):
    """Signed by another key, but the bundle claims the pipeline key: the signature fails."""
    env = released_env
    bundle = env.release_dir(1) / BUNDLE
    hint = json.loads(bundle.read_bytes())["verificationMaterial"]["publicKey"]["hint"]
    generate_key(tmp_path / "stranger.pem")
    _resign(env.release_dir(1), tmp_path / "stranger.pem")
    data = json.loads(bundle.read_bytes())
    data["verificationMaterial"]["publicKey"]["hint"] = hint
    bundle.write_text(json.dumps(data))
    _refused(env, cli, tmp_path, "signature")


def _set_pipeline_status(env, status: str) -> None:
    """Revokes or retires the pipeline key (trust_ops refuses to: it is workspace-managed)."""
    from aegis import vcs
    from aegis.crypto.keys import load_private_key

    ws = env.ws
    admin = load_private_key(env.admin_key)
    store: TrustStore = env.ledger().trust
    store.set_status("pipeline", status, reason="test", admin=admin)
    vcs.commit_paths(ws.root, f"trust: {status} pipeline", [".aegis/trust.json"])
    ws.audit().append(
        actor=admin.key_id, action=f"trust.{status[:-1]}", pipeline_key=pipeline_key(ws),
        subjects={"trust": "sha256:" + store.head}, details={"name": "pipeline"},
    )  # fmt: skip


def test_revoked_pipeline_key(released_env, cli, tmp_path):
    _set_pipeline_status(released_env, "revoked")
    assert "revoked" in _refused(released_env, cli, tmp_path, "signer")


def test_retired_pipeline_key_still_verifies(released_env, cli):
    _set_pipeline_status(released_env, "retired")
    assert open_release(released_env.ledger(), parse_target(V1)).version == "v1.0.0"
    assert cli("--workspace", released_env.root, "verify", V1).code == 0


def test_swapped_directory(released_env, cli, tmp_path):
    env = released_env
    v1, v2 = env.release_dir(1), env.release_dir(2)
    shutil.rmtree(v1)
    shutil.copytree(v2, v1)
    line = _refused(env, cli, tmp_path, "identity")
    assert "digits-model@v2.0.0" in line
    with pytest.raises(RefusedError) as exc:
        verify_release(env.ledger(), v1)
    assert exc.value.check == "identity"


def test_evidence_differs_from_the_audited_release(released_env, cli, tmp_path):
    """A release re-signed with the real pipeline key still differs from what was audited."""
    env = released_env
    d = env.release_dir(1)
    report = d / "report.html"
    text = report.read_text()
    report.unlink()
    report.write_text(text.replace("</body>", "<p>all good</p></body>"))
    _resign(d, env.ws.pipeline_key_path)
    assert "differs from the one audited" in _refused(env, cli, tmp_path, "registry")


def test_dataset_never_accepted(released_env, cli, tmp_path):
    """The pipeline key signs a release claiming a dataset ingest never accepted."""
    from aegis.crypto.bundle import hash_directory
    from aegis.registry.release import evidence_digest

    env = released_env
    d = env.release_dir(1)
    info = json.loads((d / "release.json").read_text())
    info["dataset_digest"] = "sha256:" + "ab" * 32
    (d / "release.json").unlink()
    (d / "release.json").write_text(json.dumps(info))
    _resign(d, env.ws.pipeline_key_path)
    ws = env.ws  # audit it as released, so only the dataset check can catch it
    ws.audit().append(
        actor=ws.meta()["pipeline_key"], action="release.created", pipeline_key=pipeline_key(ws),
        subjects={"evidence": evidence_digest(hash_directory(d, ignored=[BUNDLE]))},
        details={"model_name": "digits-model", "version": "v1.0.0"},
    )  # fmt: skip
    assert "never accepted" in _refused(env, cli, tmp_path, "dataset")


# -- product loads go through verification -------------------------------------------------------


def test_evaluate_a_release_verifies_it_first(released_env, cli, tmp_path):
    env = released_env
    verified = open_release(env.ledger(), parse_target(V1))
    out = tmp_path / "re"
    result = cli("--workspace", env.root, "evaluate", "digits-model@v1", "--out", out)
    assert result.code == 0, result.err + result.out
    assert json.loads((out / "metrics.json").read_text())["model"] == verified.model_digest

    _flip(env.release_dir(1) / "model" / "model.safetensors")
    result = cli("--workspace", env.root, "evaluate", env.release_dir(1), "--out", tmp_path / "x")
    assert result.code == 1 and result.err.startswith("refused: integrity:"), result.err
    assert not (tmp_path / "x").exists()


# -- symlinks, reading once, read_verified, fetching -----------------------------------------------


def test_symlink_in_a_release_is_refused(released_env, cli, tmp_path):
    env = released_env
    (env.release_dir(1) / "extra.json").symlink_to(env.release_dir(1) / "metrics.json")
    assert "extra.json" in _refused(env, cli, tmp_path, "file-set")


def test_signed_file_replaced_by_a_symlink_to_same_bytes(released_env, cli, tmp_path):
    env = released_env
    params = env.release_dir(1) / "params.yaml"
    copy = tmp_path / "params.yaml"
    copy.write_bytes(params.read_bytes())
    params.unlink()
    params.symlink_to(copy)
    assert "params.yaml" in _refused(env, cli, tmp_path, "file-set")


@pytest.mark.parametrize("name", ["metrics.json", "release.json", "model/model.safetensors"])
def test_files_are_checked_as_read_not_only_as_hashed(released_env, monkeypatch, name):
    """A file swapped after the directory was hashed is still refused: its bytes are checked."""
    import aegis.registry.verify as verify_module

    env = released_env
    signed = open_release(env.ledger(), parse_target(V1)).files
    _flip(env.release_dir(1) / name)
    monkeypatch.setattr(verify_module, "hash_directory", lambda d, ignored: dict(signed))
    with pytest.raises(RefusedError) as exc:
        verify_release(env.ledger(), env.release_dir(1))
    assert exc.value.check == "integrity" and name in str(exc.value)


def test_read_verified_checks_the_file_again(released_env):
    from aegis.registry.verify import read_verified

    env = released_env
    verified = open_release(env.ledger(), parse_target(V1))
    params = env.release_dir(1) / "params.yaml"
    assert read_verified(verified, "params.yaml") == params.read_bytes()
    _flip(params)
    with pytest.raises(RefusedError) as exc:
        read_verified(verified, "params.yaml")
    assert exc.value.check == "integrity"
    for name in ("release.sig", "../v2/params.yaml", "nope.json"):
        with pytest.raises(RefusedError) as exc:
            read_verified(verified, name)
        assert exc.value.check == "file-set"
    (env.release_dir(1) / "validation.json").unlink()
    with pytest.raises(RefusedError) as exc:
        read_verified(verified, "validation.json")
    assert exc.value.check == "file-set"


def test_load_release_model_refuses_changed_metadata(released_env):
    env = released_env
    verified = open_release(env.ledger(), parse_target(V1))
    meta = env.release_dir(1) / "model" / "metadata.json"
    data = json.loads(meta.read_text())
    data["planted"] = True
    meta.unlink()
    meta.write_text(json.dumps(data))
    with pytest.raises(RefusedError) as exc:
        load_release_model(verified)
    assert exc.value.check == "integrity"


def test_release_dvc_cannot_restore_is_refused_not_usage(released_env, cli, monkeypatch):
    import aegis.registry.verify as verify_module

    env = released_env
    shutil.rmtree(env.release_dir(1))
    # dvc "succeeds" but restores nothing
    monkeypatch.setattr(verify_module.vcs, "dvc", lambda *a, **k: "")
    with pytest.raises(RefusedError) as exc:
        open_release(env.ledger(), parse_target(V1))
    assert exc.value.check == "fetch"
    result = cli("--workspace", env.root, "verify", V1)
    assert result.code == 1 and result.err.startswith("refused: fetch:"), result.err


def test_evaluate_refuses_anything_under_releases_that_does_not_verify(released_env, cli, tmp_path):
    env = released_env
    for arg in (env.release_dir(1) / "model", "releases/digits-model/v1/model"):
        result = cli("--workspace", env.root, "evaluate", arg, "--data", "digits", "--out",
                     tmp_path / "x", cwd=env.root)  # fmt: skip
        assert result.code == 1 and result.err.startswith("refused: bundle:"), result.err
    (env.release_dir(2) / BUNDLE).unlink()
    (env.release_dir(2) / "release.json").unlink()
    result = cli("--workspace", env.root, "evaluate", env.release_dir(2), "--data", "digits",
                 "--out", tmp_path / "x")  # fmt: skip
    assert result.code == 1 and result.err.startswith("refused: bundle:"), result.err
    assert not (tmp_path / "x").exists()


# -- what a hostile review broke (each a test that failed before) --------------------------------


def test_a_directory_named_like_a_target_is_never_taken_for_it(released_env, cli, tmp_path):
    env = released_env
    trap = tmp_path / "cwd"
    trap.mkdir()
    shutil.copytree(env.release_dir(2), trap / "digits-model#prod")  # v2, not the prod holder
    from registry_helpers import promote_in_turn

    promote_in_turn(env.ws, env.model, ["v1.0.0"])
    result = cli("--workspace", env.root, "verify", "digits-model#prod", "--json", cwd=trap)
    assert result.code == 0, result.err
    assert json.loads(result.out)["release"] == "digits-model@v1.0.0"
    as_path = cli("--workspace", env.root, "verify", "./digits-model#prod", "--json", cwd=trap)
    assert as_path.code == 0 and json.loads(as_path.out)["release"] == "digits-model@v2.0.0"


@pytest.mark.parametrize("arg", ["", "   "])
def test_an_empty_release_argument_is_a_usage_error(released_env, cli, arg):
    result = cli("--workspace", released_env.root, "verify", arg)
    assert result.code == 2 and "a release is NAME@vN" in result.err, result.err


def test_a_model_trained_on_a_revoked_suppliers_data_no_longer_verifies(released_env, cli):
    from aegis.trust_ops import change_status

    env = released_env
    assert open_release(env.ledger(), parse_target(V1)).version == "v1.0.0"
    change_status(env.ws, "acme", status="revoked", reason="leaked key", admin_key=env.admin_key)
    with pytest.raises(RefusedError) as exc:
        open_release(env.ledger(), parse_target(V1))
    assert exc.value.check == "supplier" and "leaked key" in str(exc.value)
    result = cli("--workspace", env.root, "export", V1, str(env.root.parent / "out"))
    assert result.code == 1 and result.err.startswith("refused: supplier:"), result.err


def test_a_retired_supplier_still_verifies(released_env):
    from aegis.trust_ops import change_status

    env = released_env
    change_status(env.ws, "acme", status="retired", reason="rotated", admin_key=env.admin_key)
    assert open_release(env.ledger(), parse_target(V1)).version == "v1.0.0"


@pytest.mark.slow
def test_a_release_missing_from_disk_cache_and_remote_is_refused_naming_it(released_env, cli):
    env = released_env
    shutil.rmtree(env.release_dir(1))
    shutil.rmtree(env.root / ".dvc" / "cache")
    shutil.rmtree(env.ws.local_remote)
    env.ws.local_remote.mkdir()
    result = cli("--workspace", env.root, "verify", V1)
    assert result.code == 1, result.err
    assert result.err.startswith("refused: fetch:") and "releases/digits-model/v1" in result.err
