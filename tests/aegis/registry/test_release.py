"""``build_release``: the signed directory, its commit, tag and audit, and what it refuses."""

from __future__ import annotations

import json

from aegis import vcs
from aegis.crypto.bundle import hash_directory
from aegis.registry.release import BUNDLE, evidence_digest
from aegis.registry.tags import read_registry
from aegis.train.checkpoint import model_digest


def test_released_env_has_two_signed_releases(released_env):
    env = released_env
    state = read_registry(env.ws, env.model)
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
