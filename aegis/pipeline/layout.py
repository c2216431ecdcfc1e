"""Where each stage writes: the one place that knows the workspace's output paths.

Every stage output of ``dvc.yaml`` and every place Aegis keeps evidence is
named here, so release building, verification, training's data loading and
the CLI never spell a path twice. :func:`check_output` is how a command that
writes where the user says (``--out``) refuses to write over any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aegis.errors import RefusedError, UsageError
from aegis.fileutil import ensure_dir
from aegis.workspace import Workspace

# Top-level folders whose contents only their stage (or Aegis itself) writes.
PROTECTED = ("data", "validation", "quarantine", "models", "releases", ".aegis", ".git", ".dvc")


@dataclass(frozen=True)
class Layout:
    """The stage outputs of one workspace: their paths, and the one way to create their folders."""

    root: Path

    def ensure_dir(self, path: Path) -> Path:
        """Creates the folder ``path`` inside the workspace, refusing planted symlinks.

        Raises:
            UnsafeFileError: A component of ``path`` is a symlink or not a directory.
        """
        return ensure_dir(self.root, path)

    @classmethod
    def of(cls, ws: Workspace) -> Layout:
        return cls(ws.root)

    # -- ingest ---------------------------------------------------------------------------
    def data(self, name: str) -> Path:
        return self.root / "data" / name

    def data_dvc(self, name: str) -> str:
        return f"data/{name}.dvc"

    # -- validate --------------------------------------------------------------------------
    def suite(self, name: str) -> Path:
        return self.root / "expectations" / f"{name}.json"

    def validation_dir(self, name: str) -> Path:
        return self.root / "validation" / name

    def validation_result(self, name: str) -> Path:
        return self.validation_dir(name) / "result.json"

    def validation_report(self, name: str) -> Path:
        return self.validation_dir(name) / "report.html"

    def quarantine(self, name: str) -> Path:
        return self.root / "quarantine" / f"{name}.parquet"

    def quarantine_releases(self, name: str) -> Path:
        return self.root / "quarantine" / f"{name}.released.json"

    def profiles(self, name: str) -> Path:
        return self.root / ".aegis" / "profiles" / name

    def profile(self, name: str, dataset_digest: str) -> Path:
        return self.profiles(name) / f"{dataset_digest.removeprefix('sha256:')}.json"

    # -- train and evaluate ------------------------------------------------------------------
    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def reports(self, name: str) -> Path:
        return self.root / "reports" / name

    def metrics(self, name: str) -> Path:
        return self.reports(name) / "metrics.json"

    def report(self, name: str) -> Path:
        return self.reports(name) / "report.html"

    # -- releases --------------------------------------------------------------------------
    def releases(self, model: str) -> Path:
        return self.root / "releases" / model

    def release(self, model: str, number: int) -> Path:
        return self.releases(model) / f"v{number}"

    # -- approvals ------------------------------------------------------------------------
    def approvals(self, model: str, version: str) -> Path:
        return self.root / ".aegis" / "approvals" / model / version

    def rel(self, path: Path) -> str:
        """``path`` relative to the workspace root (for git, DVC and messages)."""
        return str(path.relative_to(self.root))

    def stage_outputs(self, names: list[str]) -> list[Path]:
        """The ``dvc.yaml`` outputs of the stages of ``names`` (pipeline.datasets)."""
        out: list[Path] = []
        for name in names:
            out += [self.validation_dir(name), self.quarantine(name), self.model(name)]
            out += [self.reports(name)]
        return out


def check_output(ws: Workspace | None, path: Path, *, datasets: list[str] | None = None) -> Path:
    """Refuses an output path inside what stages and Aegis own; returns it resolved.

    A command that writes where the user says may write anywhere outside the
    workspace, and inside it anywhere but the stage outputs and evidence
    (``data/``, ``validation/``, ``quarantine/``, ``models/``, ``releases/``,
    ``reports/<dataset>/``, ``.aegis/``, ``.git/``, ``.dvc/``) and files git tracks.

    Raises:
        RefusedError: ``path``: it would write into one of those.
        UsageError: ``path`` is empty.
    """
    if not str(path):
        raise UsageError("an output path must not be empty")
    resolved = path.expanduser().resolve()
    if ws is None:
        return resolved
    root = ws.root.resolve()
    if not resolved.is_relative_to(root):
        return resolved
    layout = Layout(root)
    parts = resolved.relative_to(root).parts
    owned = [root / p for p in PROTECTED] + layout.stage_outputs(datasets or [])
    if not parts:
        raise RefusedError("path", f"{path} is the workspace itself; write into a new directory")
    for top in owned:
        if resolved == top or resolved.is_relative_to(top):
            raise RefusedError(
                "path",
                f"{path} is inside {top.relative_to(root)}/, which only its stage or Aegis "
                "writes; choose a directory outside it",
            )
    from aegis import vcs

    tracked = vcs.git(root, "ls-files", "--", str(resolved.relative_to(root)), check=False)
    if tracked.strip():
        raise RefusedError("path", f"{path} is tracked by git; choose a new path")
    return resolved


def enclosing_workspace(path: Path) -> Workspace | None:
    """The workspace ``path`` lies in (any workspace, not only the command's), if any."""
    resolved = path.expanduser().resolve()
    for candidate in (resolved, *resolved.parents):
        if (candidate / ".aegis" / "workspace.json").is_file():
            return Workspace(candidate)
    return None


def check_user_output(path: Path) -> Path:
    """:func:`check_output` against whichever workspace ``path`` lies in; returns it resolved."""
    from aegis.errors import ConfigError

    ws = enclosing_workspace(path)
    if ws is None:
        return check_output(None, path)
    try:
        datasets = ws.params().pipeline.datasets
    except ConfigError:
        datasets = []
    return check_output(ws, path, datasets=datasets)
