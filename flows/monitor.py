"""The ``monitor`` flow: one production-monitor pass, for a deployment on an interval.

The pass is the core's (:func:`aegis.monitor.run.monitor_pass`): windows, signals,
incidents, containment. The flow takes no identity: the monitor key is the worker's
(``AEGIS_MONITOR_KEY``), so an API user who starts a run cannot act as anyone else, and
a worker without one refuses the run. ``monitor.gateway`` (params.yaml) is where a
rollback's containment is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow

from aegis.ledger import Ledger
from aegis.monitor.run import PassReport
from aegis.workspace import Workspace
from tasks.monitor import monitor_pass_task
from tasks.workspace import pinned_workspace

KEY_ENV = "AEGIS_MONITOR_KEY"


@flow(name="monitor", log_prints=True)
def monitor(workspace: str) -> PassReport:
    """One monitor pass over the workspace's prediction log, with the worker's monitor key.

    Args:
        workspace: Workspace root (a worker refuses any other than its own).
    """
    ledger = Ledger.load(Workspace(pinned_workspace(Path(workspace))))
    key = os.environ.get(KEY_ENV)
    if not key:
        from aegis.errors import UsageError

        raise UsageError(f"the monitor flow acts with the worker's monitor key: set {KEY_ENV}")
    report = monitor_pass_task(ledger, Path(key))
    print(f"{sum(report.windows.values())} window(s) tested, {len(report.incidents)} "
          f"incident(s) opened, {len(report.contained)} contained")  # fmt: skip
    return report
