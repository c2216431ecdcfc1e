"""``aegis demo --story theft``: model theft against the demo's gateway, caught two ways.

Runs in the folder ``aegis demo`` left. The gateway serves each release's *signed*
``serve`` params, so the story first makes one with the theft policy: the supplier's
next delivery, retrained and promoted as v3 with ``serve.watermark_rate`` 0.05 and
``serve.on_extraction: block``. Then a rival copies v3 with in-distribution queries
(never flagged: a customer within quota looks like that) and a knockoff attacker asks
photographs (flagged by the extraction monitor and blocked); ``aegis keys api list``
shows each key's score; ``aegis watermark verify`` proves the rival's copy ours, and
finds v2 (never trained on served answers) not a copy.

The demo's watermark rate is 5 %, ten times the production setting (0.5 %), so a
1,000-query theft leaves enough watermarks to show; the story says so.
"""

from __future__ import annotations

import time
from pathlib import Path

from aegis.demo import (
    MARKER,
    DemoFailed,
    _aegis,
    _demo_params,
    _prefect_server,
    _promote,
    _publish,
    _step,
    _variant,
    console,
)
from aegis.errors import UsageError

THEFT_PARAMS = {"serve": {"watermark_rate": 0.05, "on_extraction": "block"}}


def run_theft_story(directory: Path) -> None:
    """The theft story in ``directory``, a folder ``aegis demo`` made and finished."""
    start = time.monotonic()
    base = directory.expanduser().resolve()
    ws, side = base / "workspace", base / "people"
    if not (base / MARKER).is_file() or not (ws / ".aegis").is_dir():
        raise UsageError(f"{base}: not a finished demo folder (run `aegis demo {directory}` first)")
    operator = side / "alice.pem"
    told = side / "theft-story"
    if told.exists():  # its API clients exist now, and names are never reused
        raise UsageError(f"{base}: the theft story was told here (run `aegis demo` again first)")
    told.write_text("the theft story ran here\n")

    _step("T1. A release with the theft policy: watermark 5 % of answers, block extraction")
    _demo_params(ws, THEFT_PARAMS)
    console.print("(production: 0.5 % of answers; 5 % lets a 1,000-query theft show.) Serve "
                  "params are signed into a release: the next delivery makes v3")  # fmt: skip
    with _prefect_server(base / "prefect") as server:
        delivery = _variant(side, "theft", lambda frame: frame.iloc[:-1])  # one form fewer
        dataset = _publish(ws, delivery, side / "digits-3", side / "acme-data.pem")
        server.first_flow(ws, "run", "--source", dataset, "--name", "digits", "--key", operator)
        _promote(ws, "v3", operator, side / "bob.pem")
    _steal(ws, side, operator)
    console.print()
    console.print(f"[bold green]Theft story complete[/] in {time.monotonic() - start:.0f} s.")


def _steal(ws: Path, side: Path, operator: Path) -> None:
    from aegis import demo_gateway as gw

    serving = side / "gateway.pem"
    rival = _client(ws, "rival-labs", operator)
    prober = _client(ws, "prober", operator)
    with gw.gateway(ws, serving, say=console.print) as url:
        _step("T2. A rival copies the model with 1,000 in-distribution queries: not flagged")
        stolen = side / "stolen-natural"
        _aegis(ws, "attack", "extract", "--url", url, "--token", rival, "--kind", "natural",
               "--queries", "1000", "--surrogate", "forest", "--out", stolen)  # fmt: skip
        _step("T3. A knockoff attacker (photo crops): flagged by the monitor, then blocked")
        # The monitor runs in the log flusher, off the request path: the attack may end
        # before the block lands (exit 0) or be refused mid-way (exit 2). Either way the
        # key is flagged within the next flushes, and its next request is refused.
        _aegis(ws, "attack", "extract", "--url", url, "--token", prober, "--kind", "knockoff",
               "--queries", "300", "--out", side / "stolen-knockoff", expect=(0, 2))  # fmt: skip
        status, answer = _refused(url, prober, gw.sample_rows(side, 1))
        console.print(f"the prober's next request -> {status} {answer}")
        status, answer = gw.call(url + "/v1/predict", rival, {"inputs": gw.sample_rows(side, 1)})
        console.print(f"the rival's next request -> {status} (in-distribution: indistinguishable)")
        _aegis(ws, "keys", "api", "list")
    _step("T4. The watermark proves the rival's copy is ours; our own v2 is not a copy")
    _aegis(ws, "audit", "import-serving", "--key", operator)
    _aegis(ws, "watermark", "verify", stolen)
    _aegis(ws, "export", "digits-model@v2", side / "v2-export")
    _aegis(ws, "watermark", "verify", side / "v2-export")


def _client(ws: Path, name: str, operator: Path) -> str:
    out = _aegis(ws, "keys", "api", "new", "--name", name, "--rate", "2000/s", "--key", operator)
    return out.strip().splitlines()[-1]


def _refused(url: str, token: str, rows: list, *, timeout: float = 60.0) -> tuple[int, dict]:
    """The flagged key's first refused answer (the flag lands within a few flushes)."""
    from aegis import demo_gateway as gw

    deadline = time.monotonic() + timeout
    while True:
        status, answer = gw.call(url + "/v1/predict", token, {"inputs": rows})
        if status == 403:
            return status, answer
        if time.monotonic() > deadline:
            raise DemoFailed(
                f"the knockoff attacker's key still answered {status} after {timeout:.0f} s"
            )
        time.sleep(0.5)
