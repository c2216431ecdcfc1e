"""The environment SBOM: CycloneDX from cyclonedx-py, cached by the installed package list."""

from __future__ import annotations

import json

import pytest

from aegis.errors import ConfigError
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


def _fake_generator(monkeypatch, output: bytes) -> list[int]:
    import subprocess

    import aegis.registry.sbom as sbom

    calls: list[int] = []

    def run(*args, **kwargs):
        calls.append(1)
        return subprocess.CompletedProcess(args, 0, stdout=output, stderr=b"")

    monkeypatch.setattr(sbom.subprocess, "run", run)
    return calls


@pytest.mark.parametrize(
    "planted", [b"", b"{not json", b'{"bomFormat": "SPDX"}', b"[1, 2]", b'"CycloneDX"']
)
def test_a_cached_file_that_is_not_a_cyclonedx_sbom_is_regenerated(monkeypatch, tmp_path, planted):
    monkeypatch.setenv("AEGIS_CACHE_DIR", str(tmp_path))
    good = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": []})
    calls = _fake_generator(monkeypatch, good.encode())
    path = cache_dir() / f"{environment_key()}.cdx.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(planted)
    assert environment_sbom() == path
    assert calls == [1] and json.loads(path.read_text())["bomFormat"] == "CycloneDX"
    assert environment_sbom() == path and calls == [1]  # now a valid cache entry


def test_generator_output_that_is_not_cyclonedx_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("AEGIS_CACHE_DIR", str(tmp_path))
    _fake_generator(monkeypatch, b'{"hello": "world"}')
    with pytest.raises(ConfigError, match="CycloneDX"):
        environment_sbom()
    assert not (cache_dir() / f"{environment_key()}.cdx.json").exists()


def test_a_fresh_sbom_is_generated_and_checked_against_its_schema(monkeypatch, tmp_path):
    monkeypatch.setenv("AEGIS_CACHE_DIR", str(tmp_path))
    path = environment_sbom()  # the real tool, without its own (slow) validation
    sbom = json.loads(path.read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["components"]


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        ({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": "none"}, "schema"),
        ({"bomFormat": "CycloneDX", "specVersion": "1.6", "serialNumber": "x"}, "schema"),
        ({"bomFormat": "CycloneDX", "specVersion": "9.9"}, "specVersion"),
    ],
)
def test_generator_output_its_schema_refuses_is_never_cached(monkeypatch, tmp_path, document,
                                                               detail):  # fmt: skip
    monkeypatch.setenv("AEGIS_CACHE_DIR", str(tmp_path))
    _fake_generator(monkeypatch, json.dumps(document).encode())
    with pytest.raises(ConfigError, match=detail):
        environment_sbom()
    assert not (cache_dir() / f"{environment_key()}.cdx.json").exists()
