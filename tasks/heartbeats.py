"""Prefect's flow-run heartbeats, left out of the runs that end before the first is due.

A flow run's heartbeat thread tells the server every ``flows.heartbeat_frequency``
seconds (180 by default) that the run is alive. It sleeps one second at a time, and
the engine joins it when the run ends: every run pays up to a second (half on average)
at its end. The runs started here (the evaluation's ``evaluate-attacks`` subflow on the
threads runner, whose parent keeps its own heartbeat, a ``promote`` that does not wait, a
``watch`` of a few polls) end in seconds, long before a heartbeat is due. The retrain,
rollback and monitor runs, and every run a worker starts, keep Prefect's setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)


@contextmanager
def short_run(*, lasts_s: float = 0.0) -> Iterator[None]:
    """Flow runs started within have no heartbeat thread, if they end before one is due.

    Args:
        lasts_s: How long the run may take. At least the heartbeat interval, and the
            run keeps Prefect's setting (a waiting ``promote``, a Dask subflow, a long
            ``aegis watch``).
    """
    frequency = get_current_settings().flows.heartbeat_frequency
    if frequency is None or lasts_s >= frequency:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
