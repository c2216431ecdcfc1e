"""The REST event poster: events reach a real Prefect server; a missing one keeps them."""

from __future__ import annotations

from services import free_port, read_events

from aegis.events import MAX_QUEUED, EventOutbox, make_event


def _event(n: int = 0) -> dict:
    return make_event("aegis.test.happened", resource_id=f"aegis.test.{n}",
                      resource={"aegis.n": str(n)}, payload={"n": n})  # fmt: skip


def test_events_reach_the_server_in_order(prefect_server):
    outbox = EventOutbox(prefect_server)
    first, second = _event(1), _event(2)
    outbox.put(first)
    outbox.put(second)
    assert outbox.send() == 2 and outbox.pending() == 0
    wanted = {first["id"], second["id"]}
    found = read_events(prefect_server, "aegis.test.happened",
                        lambda events: wanted <= {e["id"] for e in events})  # fmt: skip
    assert wanted <= {e["id"] for e in found}


def test_an_unreachable_server_keeps_the_events_and_waits_before_retrying():
    outbox = EventOutbox(f"http://127.0.0.1:{free_port()}/api", timeout=2)
    outbox.put(_event())
    assert outbox.send() == 0 and outbox.pending() == 1
    assert outbox.send() == 0  # within the retry pause: not even tried
    assert outbox.send(force=True) == 0 and outbox.pending() == 1


def test_the_queue_is_bounded_and_no_server_means_no_queue():
    outbox = EventOutbox("http://127.0.0.1:9/api")
    for n in range(MAX_QUEUED + 5):
        outbox.put(_event(n))
    assert outbox.pending() == MAX_QUEUED and outbox.dropped == 5
    silent = EventOutbox("")
    silent.put(_event())
    assert silent.pending() == 0 and silent.send() == 0
