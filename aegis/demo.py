"""``aegis demo``: the end-to-end story, told with the real CLI.

Every step runs ``aegis`` in a subprocess and prints the command first, so
the demo doubles as a tutorial: copy the commands to do the same by hand.
A step whose exit code is not the expected one stops the demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from aegis.errors import AegisError, UsageError

console = Console(highlight=False)


class DemoFailed(AegisError):
    """A demo step did not behave as the story says."""

    exit_code = 1


def _aegis(ws: Path, *args: str | Path, expect: int = 0) -> str:
    shown = " ".join(str(a) for a in args)
    console.print(f"[bold cyan]$ aegis {shown}[/]", soft_wrap=True)
    proc = subprocess.run(
        [sys.executable, "-m", "aegis", "--workspace", str(ws), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(console.width)},
    )
    output = (proc.stdout + proc.stderr).rstrip()
    if output:
        console.print(output, markup=False, soft_wrap=True)
    if proc.returncode != expect:
        raise DemoFailed(f"demo step `aegis {shown}` exited {proc.returncode}, expected {expect}")
    return proc.stdout


def _step(title: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}"))


def _fresh_directory(directory: Path) -> Path:
    root = directory.expanduser().resolve()
    if root.exists():
        is_workspace = (root / ".aegis" / "workspace.json").is_file()
        if not is_workspace and any(root.iterdir()):
            raise UsageError(f"{root}: exists and is not an Aegis workspace; refusing to delete it")
        shutil.rmtree(root)
    return root


# Small demo budgets: a PGD-trained CNN in seconds, evaluated by every attack on fewer samples.
DEMO_PARAMS = {
    "train": {"epochs": 6, "defense": "pgd", "steps": 5, "threads": 2},
    "evaluate": {
        "max_samples": 150,
        "apgd_steps": 50,
        "apgd_targets": 2,
        "square_samples": 30,
        "square_queries": 100,
    },
}


def _demo_params(ws: Path) -> None:
    from aegis.config import override_params

    override_params(ws / "params.yaml", DEMO_PARAMS)
    subprocess.run(
        [
            "git",
            "-C",
            str(ws),
            "commit",
            "-qm",
            "demo: small training and attack budgets",
            "params.yaml",
        ],
        check=True,
    )
    console.print(f"demo params: {DEMO_PARAMS}")


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


def run_demo(directory: Path) -> None:
    """Runs the demo in ``directory`` (recreated if it is an old demo workspace)."""
    start = time.monotonic()
    ws = _fresh_directory(directory)
    side = ws / ".aegis" / "demo"  # the supplier's and operator's side, git-ignored

    _step("1. A workspace: git + DVC, pipeline and admin keys, signed trust store, audit log")
    subprocess.run([sys.executable, "-m", "aegis", "init", str(ws)], check=True)
    side.mkdir(parents=True)
    with (ws / ".gitignore").open("a") as fh:
        fh.write("/.aegis/demo/\n")
    _demo_params(ws)

    _step("2. People: a data supplier and an operator, registered by the admin")
    _aegis(
        ws,
        "keys",
        "new",
        "--role",
        "supplier",
        "--name",
        "acme-data",
        "--owner",
        "acme",
        "--out",
        side / "supplier.pem",
    )
    _aegis(
        ws,
        "keys",
        "new",
        "--role",
        "operator",
        "--name",
        "alice",
        "--owner",
        "alice",
        "--out",
        side / "operator.pem",
    )
    _aegis(ws, "trust", "list")

    _step("3. The supplier publishes digits as a signed dataset (Parquet + manifest + bundle)")
    _aegis(ws, "data", "import-sklearn", "digits", "--out", side / "raw")
    dataset = side / "digits-signed"
    _aegis(
        ws,
        "data",
        "publish",
        side / "raw",
        "--name",
        "digits",
        "--key",
        side / "supplier.pem",
        "--out",
        dataset,
    )

    _step("4. The retrain flow (Prefect): verify, validate, store, train (PGD), evaluate")
    _aegis(ws, "run", "--source", dataset, "--name", "digits", "--key", side / "operator.pem")

    _step("5. An attacker flips one byte of a copy: ingest refuses it, nothing changes")
    tampered = side / "digits-tampered"
    shutil.copytree(dataset, tampered)
    target = tampered / "digits.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    _aegis(ws, "ingest", tampered, "--name", "digits", expect=1)

    _step("6. Next delivery has a few corrupted rows: quarantined, the model trains without them")
    corrupted = _variant(side, "corrupted", _corrupt_rows)
    _aegis(
        ws,
        "data",
        "publish",
        corrupted,
        "--name",
        "digits",
        "--key",
        side / "supplier.pem",
        "--out",
        side / "digits-v2",
    )
    _aegis(
        ws,
        "run",
        "--source",
        side / "digits-v2",
        "--name",
        "digits",
        "--key",
        side / "operator.pem",
    )
    _aegis(ws, "quarantine", "show", "digits")

    _step("7. A delivery with a broken schema (a column missing) stops the run: exit 1")
    broken = _variant(side, "broken-schema", lambda f: f.drop(columns=["pixel_3_3"]))
    _aegis(
        ws,
        "data",
        "publish",
        broken,
        "--name",
        "digits",
        "--key",
        side / "supplier.pem",
        "--out",
        side / "digits-v3",
    )
    _aegis(
        ws,
        "run",
        "--source",
        side / "digits-v3",
        "--name",
        "digits",
        "--key",
        side / "operator.pem",
        expect=1,
    )

    _step("8. The audit log: every action, hash-chained, head signed by the pipeline")
    _aegis(ws, "audit", "show", "--last", "5")
    _aegis(ws, "audit", "verify")

    console.print()
    console.print(
        f"[bold green]Demo complete[/] in {time.monotonic() - start:.0f} s. "
        f"Workspace: {ws} (try `aegis --workspace {ws} trust list`)."
    )
