"""The trigger of a run: what started it, as recorded in its audit entries and release.

A run is started by an event (a dataset arrival the watch flow reported), a
schedule, a person, or an incident (the production monitor's ``retrain`` action: the
incident on the signed audit log is what is believed, not the event that carried it).
The kind is never taken from a flow parameter alone:
an event id is checked against the Prefect server's own event (see
``tasks/triggers.py``) and a schedule is read from the flow run's own record,
because any API user could pass any parameter (OSS Prefect has no access control).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from aegis.errors import RefusedError

TriggerKind = Literal["event", "schedule", "manual", "incident"]
KINDS = ("event", "schedule", "manual", "incident")


@dataclass(frozen=True)
class Trigger:
    """What started a run.

    Attributes:
        kind: ``event`` | ``schedule`` | ``manual`` | ``incident``.
        event_id: The Prefect event id (``event``).
        event: The event name (``aegis.dataset.arrived``).
        source: Where the dataset arrived (``event``).
        schedule: The cron expression (``schedule``).
        person: The operator key id (``manual`` with a key), else None.
        flow_run: The Prefect flow run id, when the run has one.
        incident: The monitor's incident id (``incident``).
    """

    kind: TriggerKind
    event_id: str | None = None
    event: str | None = None
    source: str | None = None
    schedule: str | None = None
    person: str | None = None
    flow_run: str | None = None
    incident: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The trigger as recorded: only the fields that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        """One line for a table: ``event 3f2a... (s3://bucket/in/)`` and the like."""
        if self.kind == "event":
            return f"event {str(self.event_id)[:8]} ({self.source})"
        if self.kind == "schedule":
            return f"schedule {self.schedule}"
        if self.kind == "incident":
            return f"incident {self.incident}"
        return f"manual ({self.person[:12]})" if self.person else "manual"

    @classmethod
    def from_dict(cls, data: Any) -> Trigger | None:
        """The trigger recorded in an audit entry or ``release.json``; None if absent or invalid."""
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            return None
        fields = {k: data.get(k) for k in cls.__dataclass_fields__}
        if not all(v is None or isinstance(v, str) for v in fields.values()):
            return None
        return cls(**fields)


def check_unattended(trigger: Trigger, *, allow_older: bool) -> None:
    """Unattended runs (event, schedule) never accept an older dataset.

    Raises:
        RefusedError: ``trigger``: ``allow_older`` is an operator's decision.
    """
    if trigger.kind != "manual" and allow_older:
        raise RefusedError(
            "trigger", "--allow-older is an operator's decision; a triggered run never takes it"
        )
