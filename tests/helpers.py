"""Helpers shared by tests (importable as ``helpers``; conftest holds the fixtures)."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# How long a Prefect server may take to answer: generous, so a loaded CI machine (two busy
# cores beside the tests) is slow, never failing; a server that never answers still fails.
SERVER_STARTUP_S = 300


@dataclass(frozen=True)
class Env:
    """A workspace with a supplier, an operator and a published digits dataset."""

    root: Path
    supplier_key: Path
    operator_key: Path
    dataset: Path  # a signed dataset directory outside the workspace
    raw: Path  # the unsigned Parquet it was made from

    @property
    def ws(self):
        from aegis.workspace import Workspace

        return Workspace(self.root)

    @property
    def admin_key(self) -> Path:
        """The workspace's first admin key (kept outside the workspace, as ``init`` requires)."""
        return self.supplier_key.with_name("admin.pem")

    def ledger(self):
        """A freshly verified ledger of the workspace (one per simulated command)."""
        from aegis.ledger import Ledger

        return Ledger.load(self.ws)


def env_at(base: Path) -> Env:
    """The ``Env`` laid out under ``base`` as the session template is (ws, keys, datasets)."""
    return Env(
        base / "ws",
        base / "keys" / "supplier.pem",
        base / "keys" / "operator.pem",
        base / "digits-signed",
        base / "raw",
    )


def copy_env(src: Path, dst: Path) -> Env:
    """A private copy of the environment under ``src`` (symlinks kept): milliseconds."""
    shutil.copytree(src, dst, symlinks=True)
    return env_at(dst)


def snapshot(root: Path) -> dict[str, str]:
    """Digest of every file in a workspace (git and DVC internals included).

    Excludes only scratch space that legitimately changes on any run, and the
    empty run lock file a run creates.
    """
    skip = ("/.dvc/tmp/", "/.aegis/prefect/", "/.aegis/run.lock/")
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = "/" + str(path.relative_to(root))
        if any(s in rel + "/" for s in skip) or path.is_dir():
            continue
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def verify_log(ws):
    """The full check of ``aegis audit verify`` (every entry's hash and link) plus the ledger's."""
    from aegis.ledger import Ledger

    ledger = Ledger.load(ws)
    return ws.audit().verify(pipeline_public_key=ledger.pipeline_entry().public_key)


def pipeline_key(ws):
    """The workspace's pipeline private key (tests that forge entries sign heads with it)."""
    from aegis.crypto.keys import load_private_key

    return load_private_key(ws.pipeline_key_path)
