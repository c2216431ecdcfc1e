"""Which workspace a flow run may touch: on a worker, only the one it was started for."""

from __future__ import annotations

import os
from pathlib import Path

from aegis.errors import RefusedError

WORKER_WORKSPACE = "AEGIS_WORKER_WORKSPACE"  # set by `aegis worker` for the runs it executes


def pinned_workspace(requested: Path) -> Path:
    """``requested``, if this process may work in it.

    A deployment's ``workspace`` parameter can be changed by any API user (OSS
    Prefect has no access control), so a worker runs flows only in the
    workspace it serves (``AEGIS_WORKER_WORKSPACE``).

    Raises:
        RefusedError: ``workspace``: another workspace than the worker's.
    """
    pinned = os.environ.get(WORKER_WORKSPACE)
    if pinned and Path(pinned).resolve() != requested.resolve():
        raise RefusedError(
            "workspace", f"this worker serves {pinned}; a run for {requested} is refused"
        )
    return requested
