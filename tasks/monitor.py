"""The monitor pass as a Prefect task (thin: the core decides and acts)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from aegis.ledger import Ledger
from aegis.monitor.run import PassReport, monitor_pass


@task(name="monitor-pass")
def monitor_pass_task(ledger: Ledger, key: Path) -> PassReport:
    return monitor_pass(ledger, key_path=key, gateway=ledger.ws.params().monitor.gateway,
                        progress=print)  # fmt: skip
