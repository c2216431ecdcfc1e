"""Where things live in a workspace, and how one is created.

A workspace is a git + DVC repository holding the pipeline template
(``params.yaml``, ``dvc.yaml``, ``expectations/``) and ``.aegis/``: keys
(git-ignored, 0600), the signed trust store, the audit log, approvals, a
staging area for incoming data and the Prefect home.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aegis import vcs
from aegis.audit import AuditLog, VerifiedLog
from aegis.config import Params, load_params
from aegis.crypto.keys import generate_key
from aegis.crypto.truststore import TrustStore
from aegis.errors import AegisError, ConfigError, UsageError
from aegis.fileutil import atomic_write, file_lock, read_regular

TEMPLATE_FILES = ("params.yaml", "dvc.yaml", "expectations")
GITIGNORE = """\
# Aegis: private keys, scratch space and local services never enter git.
/.aegis/keys/
/.aegis/staging/
/.aegis/scratch/
/.aegis/prefect/
/.aegis/dvc-remote/
/.aegis/audit/
/.aegis/*.lock
/.aegis/watch.json
/.aegis/serve/
"""


def template_dir() -> Path:
    """Returns the folder holding the workspace template.

    A wheel ships it as ``aegis/_template``; an editable install reads the
    checkout's top-level files.
    """
    packaged = Path(str(resources.files("aegis"))) / "_template"
    if (packaged / "params.yaml").is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "params.yaml").is_file():
        return checkout
    raise ConfigError("the workspace template (params.yaml) is missing from this install")


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace, rooted at ``root``."""

    root: Path

    @property
    def aegis_dir(self) -> Path:
        return self.root / ".aegis"

    @property
    def keys_dir(self) -> Path:
        return self.aegis_dir / "keys"

    @property
    def pipeline_key_path(self) -> Path:
        return self.keys_dir / "pipeline.pem"

    @property
    def meta_path(self) -> Path:
        return self.aegis_dir / "workspace.json"

    @property
    def trust_path(self) -> Path:
        return self.aegis_dir / "trust.json"

    @property
    def audit_dir(self) -> Path:
        return self.aegis_dir / "audit"

    @property
    def approvals_dir(self) -> Path:
        return self.aegis_dir / "approvals"

    @property
    def staging_dir(self) -> Path:
        return self.aegis_dir / "staging"

    @property
    def prefect_home(self) -> Path:
        return self.aegis_dir / "prefect"

    @property
    def local_remote(self) -> Path:
        return self.aegis_dir / "dvc-remote"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def legacy_admin_key_path(self) -> Path:
        """Where ``aegis init`` kept the admin key before it moved out of the workspace."""
        return self.keys_dir / "admin.pem"

    @property
    def scratch_dir(self) -> Path:
        """Per-run scratch directories (git-ignored): ``.aegis/scratch/<run>/``."""
        return self.aegis_dir / "scratch"

    @property
    def watch_state_path(self) -> Path:
        """What the watch flow's last poll saw and emitted (a cache, git-ignored)."""
        return self.aegis_dir / "watch.json"

    def label(self) -> str:
        """The workspace's name in events and shared stores (Redis keys): its pipeline key
        id's first 16 hex digits (an event trigger matches on it)."""
        return self.meta()["pipeline_key"][:16]

    def meta(self) -> dict[str, str]:
        """``workspace.json``: the trust anchor (admin key id) and the pipeline key id."""
        try:
            meta = json.loads(read_regular(self.meta_path, what="workspace.json"))
            return {"trust_anchor": meta["trust_anchor"], "pipeline_key": meta["pipeline_key"]}
        except (OSError, ValueError, KeyError, TypeError, RecursionError, AegisError):
            raise ConfigError(
                f"{self.meta_path}: missing or corrupt; is this a workspace?"
            ) from None

    def params(self) -> Params:
        return load_params(self.params_path)

    def audit(self) -> AuditLog:
        return AuditLog(self.audit_dir)

    @contextlib.contextmanager
    def run_lock(self, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """One retrain run at a time in this workspace, triggered or manual (held for the run).

        Args:
            on_wait: Called once if another run holds it (this one then waits its turn).
        """
        with file_lock(self.aegis_dir / "run.lock", on_wait=on_wait):
            yield

    def contains(self, path: Path) -> bool:
        """Whether ``path`` (resolved) lies inside this workspace."""
        return path.expanduser().resolve().is_relative_to(self.root.resolve())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The workspace write lock (re-entrant): hold it only around registry/data writes."""
        with file_lock(self.aegis_dir / "workspace.lock"):
            yield


def find_workspace(explicit: Path | None = None, start: Path | None = None) -> Workspace:
    """Finds the workspace: ``explicit``, ``$AEGIS_WORKSPACE``, or upward from ``start``.

    Raises:
        ConfigError: No workspace was found.
    """
    given = explicit or (
        Path(os.environ["AEGIS_WORKSPACE"]) if os.environ.get("AEGIS_WORKSPACE") else None
    )
    if given is not None:
        root = given.expanduser().resolve()
        if not (root / ".aegis" / "workspace.json").is_file():
            raise ConfigError(f"{root}: not an Aegis workspace (run `aegis init {given}`)")
        return Workspace(root)
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".aegis" / "workspace.json").is_file():
            return Workspace(candidate)
    raise ConfigError("not inside an Aegis workspace (use --workspace DIR or `aegis init DIR`)")


def init_workspace(
    directory: Path, *, admin_key_out: Path | None, remote: str | None = None
) -> tuple[Workspace, list[str]]:
    """Creates a workspace, or completes one; never changes what exists.

    Args:
        directory: Where the workspace goes (created if missing).
        admin_key_out: Where to write the first admin key: outside the workspace,
            so that whoever can read the workspace cannot change the trust store
            (and make themselves an approver). Required for a new workspace.
        remote: DVC remote URL (``s3://bucket/prefix`` or a path); default a
            local remote under ``.aegis/dvc-remote``.

    Returns:
        The workspace and the list of things created (empty on a re-run).

    Raises:
        UsageError: ``directory`` is a file or the Aegis checkout, or the admin
            key path is missing, inside the workspace, or exists.
    """
    root = directory.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: exists and is not a directory")
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and root in (checkout, *checkout.parents):
        raise UsageError(f"{root}: the Aegis source checkout is never used as a workspace")
    ws = Workspace(root)
    if not ws.meta_path.exists():
        _check_admin_key_out(root, admin_key_out)
    root.mkdir(parents=True, exist_ok=True)
    created: list[str] = []

    if not (root / ".git").exists():
        vcs.git(root, "init", "-q", "-b", "main")
        created.append("git repository")
    for key, value in (("user.name", "Aegis"), ("user.email", "aegis@localhost")):
        if not vcs.git(root, "config", "--local", "--get", key, check=False).strip():
            vcs.git(root, "config", "--local", key, value)
    if not (root / ".dvc").exists():
        vcs.dvc(root, "init", "-q")
        vcs.dvc(root, "config", "core.analytics", "false")
        created.append("DVC repository")

    src = template_dir()
    for name in TEMPLATE_FILES:
        if not (root / name).exists():
            if (src / name).is_dir():
                shutil.copytree(src / name, root / name)
            else:
                shutil.copy2(src / name, root / name)
            created.append(name)
    gitignore = root / ".gitignore"
    if not gitignore.exists() or "/.aegis/keys/" not in gitignore.read_text():
        with gitignore.open("a") as fh:
            fh.write(GITIGNORE)
        created.append(".gitignore")

    for d in (ws.keys_dir, ws.audit_dir, ws.approvals_dir, ws.prefect_home, ws.data_dir):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(ws.keys_dir, 0o700)
    created += _init_identities(ws, admin_key_out)

    if not vcs.dvc(root, "remote", "list").strip():
        url = remote or os.path.relpath(ws.local_remote, root)  # dvc rebases it on .dvc/
        if remote is None:
            ws.local_remote.mkdir(parents=True, exist_ok=True)
        vcs.dvc(root, "remote", "add", "-d", "storage", url)
        created.append(f"DVC remote {remote or '.aegis/dvc-remote'}")

    log = ws.audit()
    trailer = None
    if not log.log_path.exists():
        from aegis.crypto.keys import load_private_key

        meta = ws.meta()
        store = TrustStore.load(ws.trust_path, anchor=meta["trust_anchor"])
        pipeline_public = store.by_key_id(meta["pipeline_key"]).public_key  # type: ignore[union-attr]
        view = VerifiedLog.open(log, pipeline_public_key=pipeline_public)
        entry = view.append(
            actor=meta["pipeline_key"],
            action="workspace.init",
            pipeline_key=load_private_key(ws.pipeline_key_path),
            subjects={"trust": "sha256:" + store.head},
        )
        trailer = vcs.anchor_line(entry.seq, entry.hash)
        created.append("audit log")

    (ws.data_dir / ".gitkeep").touch()
    tracked = [
        ".gitignore",
        ".dvc",
        ".dvcignore",
        *TEMPLATE_FILES,
        ".aegis/workspace.json",
        ".aegis/trust.json",
        "data/.gitkeep",
    ]
    if created:
        vcs.commit_paths(
            root,
            "aegis init: workspace, template and trust store",
            [p for p in tracked if (root / p).exists()],
            trailer=trailer,
        )
    return ws, created


def _check_admin_key_out(root: Path, admin_key_out: Path | None) -> None:
    if admin_key_out is None:
        raise UsageError(
            "a new workspace needs --admin-key-out PATH: where to keep the admin key, "
            "outside the workspace"
        )
    path = admin_key_out.expanduser().resolve()
    if path.is_relative_to(root):
        raise UsageError(
            f"{admin_key_out}: the admin key must live outside the workspace (whoever can "
            "read the workspace could otherwise change the trust store)"
        )
    if path.exists() or Path(f"{path}.pub").exists():
        raise UsageError(f"{admin_key_out}: already exists; refusing to overwrite a key")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory")


def _init_identities(ws: Workspace, admin_key_out: Path | None) -> list[str]:
    from aegis.crypto.keys import load_private_key

    if ws.meta_path.exists():
        return []
    if ws.trust_path.exists():
        raise ConfigError(f"{ws.trust_path} exists without workspace.json; refusing to guess")
    if admin_key_out is None:  # checked before anything was created; never reached
        raise UsageError("a new workspace needs --admin-key-out PATH")
    pipeline = (
        load_private_key(ws.pipeline_key_path)
        if ws.pipeline_key_path.exists()
        else generate_key(ws.pipeline_key_path)
    )
    admin = generate_key(admin_key_out.expanduser())
    store = TrustStore.create(ws.trust_path, admin=admin, name="admin", owner="workspace-admin")
    store.add(
        name="pipeline", role="pipeline", owner="aegis", public_pem=pipeline.public_pem, admin=admin
    )
    meta = {
        "format": "aegis-workspace/1",
        "trust_anchor": admin.key_id,
        "pipeline_key": pipeline.key_id,
    }
    atomic_write(ws.meta_path, json.dumps(meta, indent=2).encode() + b"\n")
    return ["pipeline key", f"admin key {admin_key_out}", "trust store"]
