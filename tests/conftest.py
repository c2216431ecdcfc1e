"""Shared fixtures: analytics off, template workspaces, signed datasets, S3 and Prefect servers.

Workspaces and datasets are built once per session and copied per test:
``git init`` + ``dvc init`` + keys cost seconds, a copy costs milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import services
from helpers import SERVER_STARTUP_S, CliResult, Env, copy_env, env_at
from release_helpers import ReleasedEnv, build_released, copy_released

QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",  # as `aegis` and the demo start theirs
    "COLUMNS": "200",
}
os.environ.update(QUIET_ENV)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share two cores: one OpenMP thread each (torch's intra-op pool), in the
    # worker and in every `aegis` it starts. Set before torch is first imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
BIN = Path(sys.executable).parent


def pytest_configure(config) -> None:
    """An xdist worker leads a process group of its own, before it starts anything.

    Everything a worker starts inherits that group, so each worker's leftover
    check (below) sees its own processes and never its sibling's services.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") and os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)


def _our_leftovers() -> list[tuple[int, str]]:
    """Processes of this test run's process group still alive, other than us and our parents.

    Every service the tests start (moto, the Prefect server, ephemeral Prefect
    servers of `aegis` subprocesses, waiting `aegis promote` runs) inherits the
    group, so anything left here was started by the session and not stopped.
    """
    me = os.getpid()
    group = os.getpgid(me)
    ancestors, pid = set(), me
    while pid > 1:
        ancestors.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return services.group_processes(group, exclude=ancestors)


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind():
    """Set up first, torn down last: fails the session if a started process outlives it."""
    before = {pid for pid, _ in _our_leftovers()}
    yield
    deadline = time.monotonic() + 30  # servers stopped with SIGTERM may take a moment
    while (left := [p for p in _our_leftovers() if p[0] not in before]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes the tests started are still running: {left}"


# Small but real training and evaluation for tests that run the whole flow: every defense
# and attack code path is exercised, on budgets that keep the suite within its time.
FAST_PARAMS = {
    "train": {"epochs": 2, "defense": "fgsm_rs", "threads": 1},
    "evaluate": {
        "max_samples": 60,
        "pgd_steps": 5,
        "epsilons": [0.1],
        "independent": ["apgd-ce", "square"],
        "apgd_steps": 10,
        "square_samples": 20,
        "square_queries": 30,
    },
    # The label diff only: the model-based screens (a preliminary model, cross-validated
    # ensembles) and the model scan run in their own tests, not in every validation.
    "screen": {"enabled": ["label-changed"], "model_scan": {"enabled": False}},
    "monitor": {"boots": 500},  # the monitor's thresholds: their statistics live in benchmarks/
}


def _fast_params(root: Path) -> None:
    from aegis.config import override_params

    override_params(root / "params.yaml", FAST_PARAMS)
    from aegis import vcs

    vcs.commit_paths(root, "test params", ["params.yaml"])


def _build_env(base: Path) -> Env:
    from aegis.data.publish import publish_dataset
    from aegis.data.sklearn_import import import_sklearn
    from aegis.trust_ops import new_key
    from aegis.workspace import init_workspace

    keys = base / "keys"
    keys.mkdir()
    ws, _ = init_workspace(base / "ws", admin_key_out=keys / "admin.pem")
    _fast_params(ws.root)
    admin = keys / "admin.pem"
    new_key(
        ws, role="supplier", name="acme", owner="acme-data", out=keys / "supplier.pem",
        admin_key=admin,
    )  # fmt: skip
    new_key(
        ws, role="operator", name="ops", owner="alice", out=keys / "operator.pem", admin_key=admin
    )
    raw = base / "raw"
    import_sklearn("digits", out=raw)
    dataset = base / "digits-signed"
    publish_dataset(raw, name="digits", key_path=keys / "supplier.pem", out=dataset)
    return env_at(base)


@pytest.fixture(scope="session")
def template_env(tmp_path_factory) -> Env:
    return _build_env(tmp_path_factory.mktemp("template"))


@pytest.fixture
def env(template_env: Env, tmp_path: Path) -> Env:
    """A private copy of the template workspace, keys and dataset."""
    return copy_env(template_env.root.parent, tmp_path / "env")


@pytest.fixture(scope="session")
def sbom_cache(request) -> Path:
    """A persistent SBOM cache (keyed by the environment, so never stale): saves ~15 s."""
    path = Path(request.config.cache.mkdir("aegis-cache"))
    os.environ.setdefault("AEGIS_CACHE_DIR", str(path))
    return Path(os.environ["AEGIS_CACHE_DIR"])


@pytest.fixture(scope="session")
def released_base(request, tmp_path_factory, sbom_cache) -> Path:
    """A workspace with two signed releases, built once per session (use ``released_env``).

    Digits ingested and validated, ``digits-model@v1.0.0`` and ``@v2.0.0``
    released (v2 trained with ``train.seed: 1``), an operator (``ops``, owner
    alice) and two approvers (bob, carol); see ``release_helpers.ReleasedEnv``.
    ``AEGIS_TEST_RELEASED_BASE=DIR`` (opt-in, for iterating) builds it once into
    DIR and reuses it in later sessions; delete DIR after changing how releases
    are built.
    """
    reuse = os.environ.get("AEGIS_TEST_RELEASED_BASE")
    if not reuse:  # each xdist worker builds its own (in parallel, so no wall time lost)
        base = tmp_path_factory.mktemp("released") / "env"
        build_released(request.getfixturevalue("template_env").root.parent, base)
        return base
    from aegis.fileutil import file_lock

    Path(reuse).parent.mkdir(parents=True, exist_ok=True)
    with file_lock(Path(reuse + ".lock")):  # the first worker builds it, the others wait
        if not (Path(reuse) / "ws" / "releases").is_dir():
            build_released(request.getfixturevalue("template_env").root.parent, Path(reuse))
    return Path(reuse)


@pytest.fixture(scope="session")
def served_template(released_base: Path, tmp_path_factory):
    """v1 in prod, a serving key and the test clients, made once (``copy_served`` per test;
    never served from, so every copy starts with an empty prediction log)."""
    from serve_helpers import served_workspace

    return served_workspace(released_base, tmp_path_factory.mktemp("served-template") / "env")


@pytest.fixture
def released_env(released_base: Path, tmp_path: Path) -> ReleasedEnv:
    """A private copy of the session's two-release workspace (see ``released_base``)."""
    return copy_released(released_base, tmp_path / "env")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Runs ``aegis ARGS`` in-process through the real entry point (exit codes included)."""
    from aegis import cli as cli_module

    def run(*args: str, cwd: Path | None = None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["aegis", *map(str, args)])
        capsys.readouterr()
        try:
            cli_module.main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """A real S3 endpoint (moto_server) on 127.0.0.1 with test credentials in the environment."""
    port = services.free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    try:
        services.wait_http(url + "/moto-api/", proc, 30)
        os.environ.update({**_S3_ENV, "AWS_ENDPOINT_URL": url})
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": "",
}


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    """One Prefect server for the session; CLI subprocesses get its PREFECT_API_URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    with services.prefect_server(home, timeout=SERVER_STARTUP_S) as (api, _):
        yield api
