"""``aegis demo``: the end-to-end story, told with the real CLI.

Every step runs ``aegis`` in a subprocess and prints the command first, so
the demo doubles as a tutorial: copy the commands to do the same by hand.
A step whose exit code is not the expected one stops the demo.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from aegis.errors import AegisError, UsageError

console = Console(highlight=False)


class DemoFailed(AegisError):
    """A demo step did not behave as the story says."""

    exit_code = 1


def _aegis(ws: Path, *args: str | Path, expect: int | tuple[int, ...] = 0) -> str:
    shown = " ".join(str(a) for a in args)
    console.print(f"[bold cyan]$ aegis {shown}[/]", soft_wrap=True)
    proc = subprocess.run(
        [sys.executable, "-m", "aegis", "--workspace", str(ws), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(console.width)},
    )
    # stderr first: commands report there (progress, "Created ...") before their result
    output = "\n".join(part for part in (proc.stderr.rstrip(), proc.stdout.rstrip()) if part)
    if output:
        console.print(output, markup=False, soft_wrap=True)
    accepted = expect if isinstance(expect, tuple) else (expect,)
    if proc.returncode not in accepted:
        wanted = " or ".join(map(str, accepted))
        raise DemoFailed(f"demo step `aegis {shown}` exited {proc.returncode}, expected {wanted}")
    return proc.stdout


def _step(title: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}"))


MARKER = ".aegis-demo"


def _fresh_directory(directory: Path) -> Path:
    """Recreates ``directory`` if it is empty or an earlier demo's, else refuses.

    Only a folder the demo made (it holds ``.aegis-demo``, or, from earlier
    versions, ``.aegis/demo/``) is ever deleted: a real workspace's keys,
    registry and audit log are not the demo's to throw away.
    """
    root = directory.expanduser().resolve()
    if root.exists():
        if (root / MARKER).is_file() or (root / ".aegis" / "demo").is_dir():
            shutil.rmtree(root)
        elif not root.is_dir() or any(root.iterdir()):
            raise UsageError(f"{root}: exists and is not a demo folder; refusing to delete it")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `aegis demo`; deleted by the next one\n")
    return root


# Small demo budgets: an FGSM-RS-trained CNN in seconds (benchmarks/bench_defenses.py: 8 epochs
# of FGSM-RS match PGD-7 training under AutoAttack at 1.4x clean cost), evaluated by every
# attack on fewer samples; the backdoor screen's preliminary model and the model scan's
# trigger search on smaller budgets too (the story has no backdoor: each still runs).
DEMO_PARAMS = {
    "train": {"epochs": 8, "defense": "fgsm_rs", "threads": 2},
    "screen": {"backdoor": {"epochs": 4}, "model_scan": {"samples": 50, "steps": 60}},
    # 150 evaluation samples measure robust accuracy to about +-4 points: the default
    # 2-point regression gate would refuse v2 by chance in some runs
    "promote": {"max_regression": 0.05},
    "evaluate": {
        "max_samples": 150,
        "apgd_steps": 50,
        "apgd_targets": 2,
        "square_samples": 30,
        "square_queries": 100,
    },
}


# The second model: the operator tries another seed and two more epochs.
DEMO_PARAMS_V2 = {"train": {"seed": 1, "epochs": 10}}


def _demo_params(ws: Path, params: dict | None = None) -> None:
    from aegis.config import override_params

    params = params or DEMO_PARAMS
    override_params(ws / "params.yaml", params)
    unchanged = subprocess.run(["git", "-C", str(ws), "diff", "--quiet", "params.yaml"])
    if unchanged.returncode == 0:  # already so (a story run again): nothing to commit
        console.print(f"demo params: {params} (already set)")
        return
    subprocess.run(
        [
            "git",
            "-C",
            str(ws),
            "commit",
            "-qm",
            "demo: training and attack budgets",
            "params.yaml",
        ],
        check=True,
    )
    console.print(f"demo params: {params}")


def _corrupt_rows(frame):
    """Three impossible pixel values and one unknown label: row-level failures."""
    frame = frame.copy()
    frame.loc[[10, 250, 900], "pixel_4_4"] = 99.0
    frame.loc[1200, "label"] = 12
    return frame


def _variant(side: Path, tag: str, change) -> Path:
    """Writes a changed copy of the demo's raw digits (the supplier's next delivery)."""
    import pandas as pd

    out = side / f"raw-{tag}"
    out.mkdir()
    change(pd.read_parquet(side / "raw" / "digits.parquet")).to_parquet(
        out / "digits.parquet", index=False
    )
    return out


STARTUP_S = 180  # how long the first flow waits for the server to answer


class _PrefectServer:
    """One Prefect server for every flow the demo runs.

    Each ``aegis run``/``promote`` process would otherwise start Prefect's
    in-process server (10-15 s each). The server starts in the background
    first of all (a fresh database takes it about 20 s); the first flow's
    process waits for it. Its home is ``prefect/`` beside the workspace.
    """

    def __init__(self, home: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.api = f"http://127.0.0.1:{port}/api"
        self.log_path = home / "demo-server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.log_path.parent),
            "PREFECT_API_URL": "",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",  # 2 s; the demo uses no block
        }
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=self._log, stderr=self._log,
        )  # fmt: skip

    def first_flow(self, ws: Path, *args: str | Path) -> str:
        """Runs the first flow command, pointing it (and every later one) at the server.

        The server may still be starting: this one command waits for it
        (``AEGIS_PREFECT_WAIT_S``) after its own imports, seconds spent while the
        server migrates its database. Later commands find it up, or fail at once.
        """
        os.environ["PREFECT_API_URL"] = self.api
        saved = os.environ.get("AEGIS_PREFECT_WAIT_S")
        os.environ["AEGIS_PREFECT_WAIT_S"] = str(STARTUP_S)
        try:
            return _aegis(ws, *args)
        except DemoFailed:
            if self.proc.poll() is not None:
                raise DemoFailed(f"the Prefect server did not start; see {self.log_path}") from None
            raise
        finally:
            if saved is None:
                del os.environ["AEGIS_PREFECT_WAIT_S"]
            else:
                os.environ["AEGIS_PREFECT_WAIT_S"] = saved

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@contextlib.contextmanager
def _prefect_server(home: Path) -> Iterator[_PrefectServer]:
    saved = os.environ.get("PREFECT_API_URL")
    server = _PrefectServer(home)
    try:
        yield server
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


@contextlib.contextmanager
def _worker(ws: Path) -> Iterator[None]:
    """``aegis worker`` in the background for one step (stopped by PID afterwards)."""
    log_path = ws / ".aegis" / "prefect" / "demo-worker.log"
    console.print(f"[bold cyan]$ aegis worker &[/]   (its log: {log_path})", soft_wrap=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aegis", "--workspace", str(ws), "worker"],
            env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wait_for_release(ws: Path, version: str, timeout: float = 600) -> None:
    """Waits until the triggered run released ``version`` (or gives up, naming the logs)."""
    from aegis.ledger import Ledger
    from aegis.workspace import Workspace

    deadline = time.monotonic() + timeout
    with console.status("waiting for the triggered retrain run ..."):
        while time.monotonic() < deadline:
            with contextlib.suppress(AegisError):
                record = Ledger.load(Workspace(ws)).release("digits-model", version)
                if record is not None:
                    with Workspace(ws).run_lock():  # the run ends (its last push) first
                        pass
                    console.print(f"released digits-model@{version} (trigger: "
                                  f"{(record.trigger or {}).get('kind')} "
                                  f"{(record.trigger or {}).get('event_id', '')})")  # fmt: skip
                    return
            time.sleep(1.0)
    raise DemoFailed(f"no triggered release {version} in {timeout:.0f} s; see .aegis/prefect/")


def _new_key(ws: Path, side: Path, role: str, name: str, owner: str) -> Path:
    out = side / f"{name}.pem"
    _aegis(
        ws, "keys", "new", "--role", role, "--name", name, "--owner", owner, "--out", out,
        "--admin-key", side / "admin.pem",
    )  # fmt: skip
    return out


def _publish(ws: Path, src: Path, out: Path, supplier: Path) -> Path:
    _aegis(ws, "data", "publish", src, "--name", "digits", "--key", supplier, "--out", out)
    return out


def _promote(ws: Path, version: str, operator: Path, approver: Path) -> None:
    """Request, approve (another owner), complete: the two-person rule in three commands."""
    target = f"digits-model@{version}"
    _aegis(ws, "promote", target, "--key", operator)
    _aegis(ws, "approve", target, "--key", approver)
    _aegis(ws, "promote", target, "--key", operator, "--resume")


def run_demo(directory: Path) -> None:
    """Runs the demo in ``directory`` (recreated if it is an old demo workspace)."""
    start = time.monotonic()
    base = _fresh_directory(directory)
    ws = base / "workspace"
    # The people's side: each person's private key and the supplier's files live outside
    # the workspace, as on a real team (a key inside the workspace is refused). The demo
    # keeps them together in one folder, people/, and says so.
    side = base / "people"
    side.mkdir()

    with _prefect_server(base / "prefect") as server:
        _step("1. A workspace: git + DVC, the pipeline key, a signed trust store, the audit log")
        console.print(f"people's keys (admin included) live in {side}, outside the workspace")
        subprocess.run(
            [sys.executable, "-m", "aegis", "init", str(ws), "--admin-key-out",
             str(side / "admin.pem")],
            check=True,
        )  # fmt: skip
        _demo_params(ws)
        _story(ws, side, server)
    console.print()
    console.print(
        f"[bold green]Demo complete[/] in {time.monotonic() - start:.0f} s. "
        f"Workspace: {ws} (try `aegis --workspace {ws} status`); the people's keys: {side}."
    )
    console.print(f"Model theft, caught two ways: `aegis demo {directory} --story theft` (~80 s).")


def _story(ws: Path, side: Path, server: _PrefectServer) -> None:
    _step("2. People: a data supplier, an operator and an approver (another owner)")
    supplier = _new_key(ws, side, "supplier", "acme-data", "acme")
    operator = _new_key(ws, side, "operator", "alice", "alice")
    approver = _new_key(ws, side, "approver", "bob", "bob")
    _aegis(ws, "trust", "list")

    _step("3. The supplier publishes digits as a signed dataset (Parquet + manifest + bundle)")
    _aegis(ws, "data", "import-sklearn", "digits", "--out", side / "raw")
    dataset = _publish(ws, side / "raw", side / "digits-signed", supplier)

    _step("4. An attacker flips one byte of a copy: ingest refuses it, nothing changes")
    tampered = side / "digits-tampered"
    shutil.copytree(dataset, tampered)
    target = tampered / "digits.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    _aegis(ws, "ingest", tampered, "--name", "digits", expect=1)

    _step("5. The retrain flow (Prefect): verify, validate, train (FGSM-RS), evaluate, sign v1")
    server.first_flow(ws, "run", "--source", dataset, "--name", "digits", "--key", operator)

    _step("6. Promotion of v1: gates, a signed request by alice, approval by bob -> prod")
    _promote(ws, "v1", operator, approver)

    _step(
        "7. An insider: the supplier's own key signs a copy with a quarter of the labels "
        "flipped; the screens stop the run, nothing is stored, the supplier's record counts it"
    )
    truth = side / "poison-truth.json"  # the attacker's notes: the pipeline never reads them
    poisoned = side / "digits-poisoned"
    _aegis(ws, "attack", "poison", dataset, "--name", "digits", "--kind", "flip", "--rate",
           "0.25", "--key", supplier, "--out", poisoned, "--truth", truth)  # fmt: skip
    _aegis(ws, "run", "--source", poisoned, "--name", "digits", "--key", operator, expect=1)
    _aegis(ws, "trust", "list")

    _step("8. Aegis as a service: deploy, a worker; the next delivery retrains by itself -> v2")
    inbox = side / "inbox"
    inbox.mkdir()
    _demo_params(
        ws,
        {
            **DEMO_PARAMS_V2,
            "triggers": {"sources": [str(inbox)], "poll_interval": 2, "watch_for": "1h"},
        },
    )
    _aegis(ws, "deploy")
    with _worker(ws):
        console.print("the supplier's next delivery (3 corrupted rows) lands in the inbox:")
        corrupted = _variant(side, "corrupted", _corrupt_rows)
        _publish(ws, corrupted, inbox / "delivery-2", supplier)
        _aegis(ws, "watch", "--polls", "2")  # what the watch deployment does on its interval
        console.print("the event trigger starts `retrain` on the worker, as the pipeline key ...")
        _wait_for_release(ws, "v2.0.0")
    _aegis(ws, "quarantine", "show", "digits")

    _step("9. Promotion of v2, the same way")
    _promote(ws, "v2", operator, approver)
    _aegis(ws, "status")

    _serve_and_roll_back(ws, side, operator)

    _step("12. The audit log: every action, hash-chained, head signed by the pipeline")
    _aegis(ws, "audit", "show", "--last", "8")
    _aegis(ws, "audit", "verify")


def _serve_and_roll_back(ws: Path, side: Path, operator: Path) -> None:
    from aegis import demo_gateway as gw

    _step("10. The gateway serves prod: a serving key, an API client, authenticated answers")
    serving = _new_key(ws, side, "serving", "gateway", "platform")
    token = _aegis(ws, "keys", "api", "new", "--name", "forms-app", "--rate", "1000/s",
                   "--key", operator).strip().splitlines()[-1]  # fmt: skip
    rows = gw.sample_rows(side)
    with gw.gateway(ws, serving, say=console.print) as url:
        status, answer = gw.call(url + "/v1/predict", token, {"inputs": rows})
        console.print(f"POST /v1/predict (4 rows) -> {status} {answer}")
        status, answer = gw.call(url + "/v1/predict", "aegis_" + "x" * 43, {"inputs": rows})
        console.print(f"the same with a wrong token -> {status} {answer}")
        status, answer = gw.call(url + "/v1/predict", token, {"inputs": [[99.0] * 64]})
        console.print(f"pixels far outside the training range -> {status} {answer}")

        _step("11. Incident: the monitor sees v2 answer inverted forms and rolls back by itself")
        monitor = _new_key(ws, side, "monitor", "watchman", "sre")
        kiosk = _aegis(ws, "keys", "api", "new", "--name", "kiosk", "--rate", "1000/s",
                       "--key", operator).strip().splitlines()[-1]  # fmt: skip
        inverted = [[16.0 - v for v in row] for row in gw.sample_rows(side, 100)]
        for start, caller in zip((0, 25, 50, 75), (token, kiosk, token, kiosk), strict=True):
            part = {"inputs": inverted[start : start + 25]}
            status, _ = gw.call(url + "/v1/predict", caller, part)
            if status != 200:
                raise DemoFailed(f"the gateway answered {status} to the inverted forms")
        console.print("two clients send 100 inverted forms; the gateway logs them, signed ...")
        gw.wait_for_logged(ws, 104)
        _aegis(ws, "monitor", "--key", monitor, "--gateway", url)
        _aegis(ws, "incidents", "list")
        took = gw.wait_for_version(url, token, "v1.0.0")
        console.print(f"the gateway serves v1.0.0 ({took:.1f} s after the pass ended), no failed "
                      "call; v2 is marked suspect until an operator decides")  # fmt: skip
        _aegis(ws, "report", "incidents", "--out", side / "incidents.html")
        _aegis(ws, "keys", "api", "revoke", "forms-app", "--reason", "token leaked in a ticket",
               "--key", operator)  # fmt: skip
        status, answer = gw.call(url + "/v1/predict", token, {"inputs": rows})
        console.print(f"the revoked token, next request -> {status} {answer}")
        if status != 403:
            raise DemoFailed(f"a revoked token answered {status}")
    _aegis(ws, "audit", "import-serving", "--key", operator)
    _aegis(ws, "status")
