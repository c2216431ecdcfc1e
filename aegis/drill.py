"""``aegis drill``: rehearse the incident playbook end to end, in a scratch workspace.

The drill never touches the current workspace, its keys or its suppliers' records: it
makes a scratch workspace with its own admin, supplier, operator, approver, monitor
and serving keys (the current workspace's ``monitor:`` policy copied in, when run in
one, so the drill rehearses *that* policy). Then:

1. the supplier's digits are ingested, validated, trained, released and promoted as
   v1, through the normal gates and the two-person approval (the known-good version);
2. a *named degradation*: a delivery in which every 1 is labelled 7 and every 3 is
   labelled 8 (pair flips) is released and promoted as v2 the same way. The scratch
   copy runs with the poisoning screens and the drift gate switched off (the drill says
   so): with them on, the delivery would be stopped at the door, as ``aegis demo``
   shows. On its own poisoned test split v2 looks as good as v1;
3. a real gateway (``aegis serve``) serves v2; clean forms are replayed through it and
   their true labels come back as feedback;
4. the monitor (a pass every second, the gateway's URL given) detects the fall in
   feedback accuracy and rolls back with its own key; containment ends when the
   gateway's ``/readyz`` serves v1.

The result holds time-to-detect and time-to-contain (from the first bad request), the
version rolled back to, the incident id and the scratch workspace (its incident record
stays there: ``aegis --workspace DIR incidents list``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aegis.errors import RefusedError, UsageError

MODEL, DATASET = "digits-model", "digits"
FLIPS = {1: 7, 3: 8}  # the named degradation: every 1 labelled 7, every 3 labelled 8
# Small budgets (the drill rehearses monitoring, not robustness: the gates still apply),
# and, in the scratch copy only, the screens and drift gate off so the poison reaches v2
DRILL_PARAMS: dict[str, Any] = {
    "train": {"epochs": 10, "defense": "fgsm_rs", "threads": 2},
    "evaluate": {"max_samples": 100, "pgd_steps": 5, "epsilons": [0.1], "independent": []},
    # (the model scan too: it looks for a trigger, which a pair flip is not; ~6 s a release)
    "screen": {"enabled": [], "model_scan": {"enabled": False}}, "validate": {"max_psi": 1e9},
    # 100 evaluation samples measure robust accuracy +-5 points: a 2-point regression gate
    # would refuse v2 by chance half the time
    "promote": {"max_regression": 0.1},
}  # fmt: skip
REPLAY_ROWS, BATCH, CALLERS = 300, 25, 4
DETECT_TIMEOUT = 60.0  # seconds of monitor passes before the drill gives up


class DrillFailed(RefusedError):
    """A drill step did not behave as the playbook says (check ``drill``, exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__("drill", message)

    def __reduce__(self):
        return (type(self), (self.detail,))


@dataclass(frozen=True)
class DrillResult:
    workspace: str
    degradation: str
    incident: str
    signals: list[str]
    action: str
    rolled_back_to: str | None
    time_to_detect_s: float
    time_to_contain_s: float | None
    monitor_interval_s: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_drill(
    directory: Path | None = None,
    *,
    policy_from: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> DrillResult:
    """Runs the drill in ``directory`` (default: a new temporary folder).

    Args:
        directory: An empty or missing folder for the scratch workspace and its keys.
        policy_from: A workspace whose ``monitor:`` params the drill uses.
        say: Called with a line per step.

    Raises:
        UsageError: ``directory`` is not empty.
        DrillFailed: A step did not behave as the playbook says (``drill``).
    """
    started = time.monotonic()
    base = _fresh(directory)
    ws_root, side = base / "workspace", base / "people"
    side.mkdir()
    say(
        f"scratch workspace {ws_root} (its own keys in {side}); nothing else is touched. "
        "Its poisoning screens and drift gate are OFF, so the poisoned delivery gets in"
    )
    ws, keys = _workspace(ws_root, side, policy_from)
    from aegis.data.sklearn_import import import_sklearn

    raw = import_sklearn("digits", out=side / "raw").parent
    say("v1: the supplier's digits -> ingest, validate, screen, train, evaluate, release")
    _release(ws, raw, side / "delivery-1", keys)
    promote_with_approval(ws, "v1.0.0", keys)
    flipped = _flip(raw, side / "raw-flipped")
    say(
        "v2: a delivery with every 1 labelled 7 and every 3 labelled 8 (pair flips) -> "
        "released and promoted the same way"
    )
    _release(ws, flipped, side / "delivery-2", keys)
    promote_with_approval(ws, "v2.0.0", keys)
    incident = _serve_and_watch(ws, side, raw, keys, say)
    containment = incident.containment or {}
    if containment.get("result") != "rolled-back":
        result = containment.get("result", "none")
        raise DrillFailed(f"incident {incident.id}: {incident.action}, containment {result} "
                          "(the playbook rolls back)")  # fmt: skip
    return DrillResult(
        workspace=str(ws_root), degradation="pair flips 1->7, 3->8; screens off (scratch)",
        incident=incident.id, signals=incident.signals, action=incident.action,
        rolled_back_to=f"{MODEL}@{containment.get('to_version')}",
        time_to_detect_s=round(incident.time_to_detect_s, 3),
        time_to_contain_s=None if incident.time_to_contain_s is None
        else round(incident.time_to_contain_s, 3),
        monitor_interval_s=1.0, seconds=round(time.monotonic() - started, 1),
    )  # fmt: skip


def _fresh(directory: Path | None) -> Path:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="aegis-drill-"))
    base = directory.expanduser().absolute()
    if base.is_symlink() or (base.exists() and (not base.is_dir() or any(base.iterdir()))):
        raise UsageError(f"{directory}: the drill needs an empty or new folder")
    base.mkdir(parents=True, exist_ok=True)
    return base.resolve()


def _workspace(root: Path, side: Path, policy_from: Path | None):
    from aegis.trust_ops import new_key
    from aegis.workspace import Workspace, init_workspace

    ws, _ = init_workspace(root, admin_key_out=side / "admin.pem")
    monitor = None
    if policy_from is not None:
        # the policy, not where its gateway is or how often its deployment runs
        monitor = Workspace(policy_from).params().monitor.model_dump(exclude={"gateway", "every"})
    _params(
        ws,
        DRILL_PARAMS | ({"monitor": monitor} if monitor else {}),
        "drill: small budgets; screens and drift gate off (scratch copy)",
    )
    keys = {}
    for role, name, owner in [("supplier", "drill-supplier", "supplier"),
                              ("operator", "drill-operator", "alice"),
                              ("approver", "drill-approver", "bob"),
                              ("monitor", "drill-monitor", "sre"),
                              ("serving", "drill-gateway", "platform")]:  # fmt: skip
        keys[role] = side / f"{name}.pem"
        new_key(ws, role=role, name=name, owner=owner, out=keys[role],
                admin_key=side / "admin.pem")  # fmt: skip
    return ws, keys


def _params(ws, params: dict[str, Any], message: str) -> None:
    from aegis import vcs
    from aegis.config import override_params

    override_params(ws.params_path, params)
    vcs.commit_paths(ws.root, message, ["params.yaml"])


def _flip(raw: Path, out: Path) -> Path:
    import pandas as pd

    out.mkdir()
    frame = pd.read_parquet(next(raw.glob("*.parquet")))
    frame["label"] = frame["label"].replace(FLIPS)
    frame.to_parquet(out / "digits.parquet", index=False)
    return out


def _release(ws, raw: Path, out: Path, keys: dict[str, Path]) -> None:
    from aegis.data.publish import publish_dataset
    from aegis.ledger import Ledger
    from aegis.pipeline.retrain import AlreadyCurrent, run_retrain

    publish_dataset(raw, name=DATASET, key_path=keys["supplier"], out=out)
    ledger = Ledger.load(ws)
    actor, _ = ledger.actor(keys["operator"], role="operator")
    try:
        result = run_retrain(ledger, source=str(out), name=DATASET, actor=actor)
    except RefusedError as exc:
        raise DrillFailed(f"the drill's release was refused: {exc}") from None
    if isinstance(result, AlreadyCurrent):
        raise DrillFailed(f"the drill's delivery was not released: {result.message()}")


def promote_with_approval(ws, version: str, keys: dict[str, Path]) -> None:
    """The two-person rule: the operator requests, the approver approves, the operator
    completes; ``keys`` holds ``operator`` and ``approver`` key paths."""
    from aegis.ledger import Ledger
    from aegis.registry.promotion import approve, promote
    from aegis.registry.targets import Target

    target = Target(model=MODEL, version=version)
    try:
        promote(Ledger.load(ws), target, operator_key_path=keys["operator"])
        approve(Ledger.load(ws), target, approver_key_path=keys["approver"])
        done = promote(Ledger.load(ws), target, operator_key_path=keys["operator"], resume=True)
    except RefusedError as exc:
        raise DrillFailed(f"promotion of {version} was refused: {exc}") from None
    if done.status != "promoted":
        raise DrillFailed(f"promotion of {version} ended {done.status}")


def _serve_and_watch(ws, side: Path, raw: Path, keys: dict[str, Path], say):
    import pandas as pd

    from aegis import demo_gateway as gw
    from aegis.ledger import Ledger
    from aegis.monitor.run import monitor_pass
    from aegis.serve.client_ops import new_client
    from aegis.serve.clients import parse_limit

    # several callers, as in production: a breach from one key would only throttle it
    tokens = [
        new_client(ws, name=f"drill-app-{i}", scopes=("predict",),
                   rate=parse_limit("100000/s", what="rate"),
                   quota=parse_limit("100000000/day", what="quota"),
                   key_path=keys["operator"]).token
        for i in range(CALLERS)
    ]  # fmt: skip
    frame = pd.read_parquet(next(raw.glob("*.parquet"))).sample(REPLAY_ROWS, random_state=0)
    rows = frame.drop(columns=["label"]).to_numpy(float)
    truth = frame["label"].to_numpy(int)
    with gw.gateway(ws.root, keys["serving"], say=say) as url:
        gw.wait_for_version(url, tokens[0], "v2.0.0")
        say(f"{CALLERS} callers replay {REPLAY_ROWS} clean forms through the gateway (v2 "
            "serving); their true labels come back as feedback")  # fmt: skip
        for i, start in enumerate(range(0, REPLAY_ROWS, BATCH)):
            token = tokens[i % CALLERS]
            status, body = gw.call(url + "/v1/predict", token,
                                   {"inputs": rows[start : start + BATCH].tolist()})  # fmt: skip
            if status != 200:
                raise DrillFailed(f"the gateway answered {status} to the replay: {body}")
            labels = {"request": body["request"], "labels": truth[start : start + BATCH].tolist()}
            status, body = gw.call(url + "/v1/feedback", token, labels)
            if status != 202:
                raise DrillFailed(f"the gateway answered {status} to feedback: {body}")
        say(f"the monitor: a pass every 1 s, --gateway {url} (feedback: POST /v1/feedback)")
        deadline = time.monotonic() + DETECT_TIMEOUT
        while time.monotonic() < deadline:
            report = monitor_pass(Ledger.load(ws), key_path=keys["monitor"], gateway=url,
                                  progress=say)  # fmt: skip
            if report.incidents:
                break
            time.sleep(1.0)
        else:
            raise DrillFailed(f"the monitor saw no incident in {DETECT_TIMEOUT:.0f} s")
    from aegis.monitor.incidents import incidents

    return next(i for i in incidents(Ledger.load(ws)) if i.id == report.incidents[0].id)
