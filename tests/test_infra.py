"""infra/: the team stack's compose file and Prefect deployment file, checked without Docker.

Where ``docker compose`` exists it validates the compose file too; everywhere,
the files are parsed and held to what ``aegis deploy`` and the worker need.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.deploy import arrival_trigger, incident_trigger

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_runs_prefect_on_postgres_minio_and_a_worker():
    services = _compose()["services"]
    assert {"postgres", "prefect", "minio", "minio-buckets", "worker"} <= set(services)
    prefect = services["prefect"]
    assert prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )
    assert prefect["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert worker["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "aegis --workspace /ws worker" in worker["command"]
    assert "--with-lock aegis/audit" in services["minio-buckets"]["entrypoint"]


def test_compose_holds_no_literal_credential():
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", key):
                assert str(value).startswith("${"), f"{name}.{key} is a literal"


def test_compose_config_validates_where_docker_compose_exists(tmp_path):
    docker = shutil.which("docker")
    has_compose = docker and subprocess.run(
        [docker, "compose", "version"], capture_output=True
    ).returncode == 0  # fmt: skip
    if not has_compose:  # shown in the summary (-ra): the parse tests above are the check here
        pytest.skip("docker compose not available: infra/docker-compose.yml checked by parsing")
    env = {"PREFECT_DB_PASSWORD": "x", "MINIO_ROOT_USER": "x", "MINIO_ROOT_PASSWORD": "x"}
    result = subprocess.run(
        [docker, "compose", "-f", str(INFRA / "docker-compose.yml"), "config", "-q"],
        env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_prefect_yaml_matches_what_aegis_deploy_registers():
    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    entrypoints = [d["entrypoint"] for d in spec["deployments"]]
    assert entrypoints == [
        "flows.watch.watch", "flows.retrain.retrain", "flows.promote.promote",
        "flows.rollback.rollback", "flows.monitor.monitor",
    ]  # fmt: skip
    for entry in entrypoints:
        module, _, name = entry.rpartition(".")
        assert hasattr(importlib.import_module(module), name)
    for deployment in spec["deployments"]:
        params = set(deployment["parameters"])
        assert params == {"workspace"}, "a deployment default may only name the workspace"
    (trigger, breach) = spec["deployments"][1]["triggers"]
    for got, expected in [(trigger, arrival_trigger("id", "{{ $AEGIS_WORKSPACE }}", 60)),
                          (breach, incident_trigger("id", "{{ $AEGIS_WORKSPACE }}"))]:  # fmt: skip
        assert got["parameters"] == expected.parameters
        assert set(got["expect"]) == expected.expect
        assert set(got["for_each"]) == expected.for_each
        assert set(got["match"]) == {k for k, _ in expected.match.items()}
    assert breach["match"]["aegis.action"] == "retrain"
