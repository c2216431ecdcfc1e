"""The environment SBOM: CycloneDX from cyclonedx-py, cached by the installed package list."""

from __future__ import annotations

import json

from aegis.registry.sbom import cache_dir, environment_key, environment_sbom


def test_sbom_lists_this_environment_and_is_cached(sbom_cache):
    path = environment_sbom()
    assert path.parent == cache_dir() and path.name == f"{environment_key()}.cdx.json"
    sbom = json.loads(path.read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"].lower() for c in sbom["components"]}
    assert {"torch", "model-signing", "dvc", "cyclonedx-bom"} <= names
    before = path.stat().st_mtime_ns
    assert environment_sbom() == path and path.stat().st_mtime_ns == before  # cached


def test_cache_key_is_stable_and_env_dir_respected(monkeypatch, tmp_path):
    assert environment_key() == environment_key()
    monkeypatch.setenv("AEGIS_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path / "sbom"
    monkeypatch.delenv("AEGIS_CACHE_DIR")
    assert cache_dir().parts[-3:] == (".cache", "aegis", "sbom")


def test_release_carries_the_environment_sbom(released_env):
    released = released_env.release_dir(1) / "sbom.cdx.json"
    assert released.read_bytes() == environment_sbom().read_bytes()
