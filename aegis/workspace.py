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
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aegis import vcs
from aegis.audit import AuditCheck, AuditLog
from aegis.config import Params, load_params
from aegis.crypto.keys import PrivateKey, generate_key, load_private_key
from aegis.crypto.truststore import TrustEntry, TrustStore
from aegis.errors import ConfigError, RefusedError, UsageError
from aegis.fileutil import atomic_write, file_lock

TEMPLATE_FILES = ("params.yaml", "dvc.yaml", "expectations")
GITIGNORE = """\
# Aegis: private keys, scratch space and local services never enter git.
/.aegis/keys/
/.aegis/staging/
/.aegis/prefect/
/.aegis/dvc-remote/
/.aegis/audit/
/.aegis/*.lock
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
    def admin_key_path(self) -> Path:
        return self.keys_dir / "admin.pem"

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

    # -- loaders that verify what they load ------------------------------------

    def meta(self) -> dict[str, str]:
        try:
            meta = json.loads(self.meta_path.read_text())
            return {"trust_anchor": meta["trust_anchor"], "pipeline_key": meta["pipeline_key"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{self.meta_path}: missing or corrupt; is this a workspace?"
            ) from None

    def params(self) -> Params:
        return load_params(self.params_path)

    def trust(self) -> TrustStore:
        """Loads the trust store and verifies its whole signed history."""
        return TrustStore.load(self.trust_path, anchor=self.meta()["trust_anchor"])

    def audit(self) -> AuditLog:
        return AuditLog(self.audit_dir)

    def pipeline_key(self) -> PrivateKey:
        key = load_private_key(self.pipeline_key_path)
        if key.key_id != self.meta()["pipeline_key"]:
            raise RefusedError("signer", "the pipeline key on disk is not this workspace's")
        return key

    def pipeline_entry(self) -> TrustEntry:
        entry = self.trust().by_key_id(self.meta()["pipeline_key"])
        if entry is None:
            raise RefusedError("trust-store", "the pipeline key is not in the trust store")
        return entry

    def actor(self, key_path: Path | None, *, role: str = "operator") -> tuple[str, TrustEntry]:
        """Resolves who is acting: the holder of ``key_path``, or the pipeline.

        Args:
            key_path: A private key of an active ``role`` key, or None for an
                unattended run (the pipeline key is then the actor).
            role: The role ``key_path`` must hold.

        Returns:
            The actor's key id and trust entry.
        """
        trust = self.trust()
        if key_path is None:
            entry = self.pipeline_entry()
            return entry.key_id, entry
        key = load_private_key(key_path)
        entry = trust.require_signer(key.key_id, role=role, what=str(key_path), new=True)
        return entry.key_id, entry

    def verify_audit(self) -> AuditCheck:
        """Verifies the audit log, and that the trust store is the one it last recorded.

        The second check catches a trust store rolled back to an older signed
        state (say, to undo a revocation): every change is audited with the
        store's head hash.
        """
        log = self.audit()
        check = log.verify(pipeline_public_key=self.pipeline_entry().public_key)
        first = log.entries()[:1]
        if not first or first[0].action != "workspace.init":
            raise RefusedError("audit", "entry 0: the log does not start at workspace.init")
        head = "sha256:" + self.trust().head
        recorded = [e.subjects["trust"] for e in log.entries() if "trust" in e.subjects]
        if recorded and recorded[-1] != head:
            raise RefusedError(
                "trust-store", "the trust store differs from its last audited state (rolled back?)"
            )
        return check

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The workspace write lock: hold it only around registry/data writes."""
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


def init_workspace(directory: Path, *, remote: str | None = None) -> tuple[Workspace, list[str]]:
    """Creates a workspace, or completes one; never changes what exists.

    Args:
        directory: Where the workspace goes (created if missing).
        remote: DVC remote URL (``s3://bucket/prefix`` or a path); default a
            local remote under ``.aegis/dvc-remote``.

    Returns:
        The workspace and the list of things created (empty on a re-run).
    """
    root = directory.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: exists and is not a directory")
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and root in (checkout, *checkout.parents):
        raise UsageError(f"{root}: the Aegis source checkout is never used as a workspace")
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
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
    created += _init_identities(ws)

    if not vcs.dvc(root, "remote", "list").strip():
        url = remote or os.path.relpath(ws.local_remote, root)  # dvc rebases it on .dvc/
        if remote is None:
            ws.local_remote.mkdir(parents=True, exist_ok=True)
        vcs.dvc(root, "remote", "add", "-d", "storage", url)
        created.append(f"DVC remote {remote or '.aegis/dvc-remote'}")

    audit = ws.audit()
    if not audit.log_path.exists():
        audit.append(
            actor=ws.meta()["pipeline_key"],
            action="workspace.init",
            pipeline_key=ws.pipeline_key(),
            subjects={"trust": "sha256:" + ws.trust().head},
        )
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
        )
    return ws, created


def _init_identities(ws: Workspace) -> list[str]:
    created: list[str] = []
    if ws.meta_path.exists():
        return created
    pipeline = (
        load_private_key(ws.pipeline_key_path)
        if ws.pipeline_key_path.exists()
        else generate_key(ws.pipeline_key_path)
    )
    admin = (
        load_private_key(ws.admin_key_path)
        if ws.admin_key_path.exists()
        else generate_key(ws.admin_key_path)
    )
    created += ["pipeline key", "admin key"]
    if ws.trust_path.exists():
        raise ConfigError(f"{ws.trust_path} exists without workspace.json; refusing to guess")
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
    created.append("trust store")
    return created
