"""The monitor's ``retrain`` action: a forced retrain for an incident on the audit log.

The incident is recorded as the monitor records one (its own key as the actor); what
is tested here is the retrain it allows, once, on the latest accepted data.
"""

from __future__ import annotations

import pytest

from aegis.errors import RefusedError
from aegis.monitor.incidents import Incident, incident_id, record_incident
from aegis.pipeline.retrain import AlreadyCurrent, run_incident_retrain
from aegis.timeutil import utc_now


def _incident(env, action: str, tag: str) -> str:
    from aegis.trust_ops import new_key

    key = env.root.parent / "keys" / f"monitor-{tag}.pem"
    entry = new_key(env.ws, role="monitor", name=f"watch-{tag}", owner="sre", out=key,
                    admin_key=env.admin_key)  # fmt: skip
    windows = [f"sha256:{tag}"]
    now = utc_now()
    incident = Incident(
        id=incident_id("v1.0.0", windows), model=env.model, version="v1.0.0",
        signals=["label_chi2"], values={"label_chi2": [99.0]}, thresholds={"label_chi2": 30.0},
        windows=windows, first_bad=now, detected=now, action=action, actor=entry.key_id,
    )  # fmt: skip
    recorded, _ = record_incident(env.ledger(), incident)
    return recorded.id


def test_a_retrain_incident_releases_once_and_other_incidents_start_nothing(released_env):
    env = released_env
    with pytest.raises(RefusedError) as refused:
        run_incident_retrain(env.ledger(), incident="inc-000000000000")
    assert refused.value.check == "incident" and "not on the audit log" in str(refused.value)
    alert = _incident(env, "alert", "a")
    with pytest.raises(RefusedError, match="is a alert incident"):
        run_incident_retrain(env.ledger(), incident=alert)
    retrain = _incident(env, "retrain", "r")
    result = run_incident_retrain(env.ledger(), incident=retrain)
    assert result.status == "completed" and result.validate is None
    assert result.release.tag.startswith(f"{env.model}@v3")
    record = env.ledger().release(env.model, result.release.version)
    assert record.trigger == {"kind": "incident", "incident": retrain}
    assert record.actor == env.ledger().pipeline_entry().key_id  # unattended: the pipeline
    again = run_incident_retrain(env.ledger(), incident=retrain)
    assert isinstance(again, AlreadyCurrent) and again.release == result.release.tag
