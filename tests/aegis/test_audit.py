"""Tests of the hash-chained audit log: appends, verification, tampering, concurrency."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aegis.audit import GENESIS, AuditEntry, AuditLog
from aegis.crypto.keys import PrivateKey, canonical_json, generate_key
from aegis.errors import RefusedError
from aegis.timeutil import parse_utc

REPO = Path(__file__).resolve().parents[2]
N_ENTRIES = 5


# -- helpers -----------------------------------------------------------------------


@pytest.fixture
def pipeline_key(tmp_path: Path) -> PrivateKey:
    return generate_key(tmp_path / "pipeline.pem")


@pytest.fixture
def other_key(tmp_path: Path) -> PrivateKey:
    return generate_key(tmp_path / "other.pem")


@pytest.fixture
def log(tmp_path: Path, pipeline_key: PrivateKey) -> AuditLog:
    """A log of ``N_ENTRIES`` entries, signed by ``pipeline_key``."""
    audit = AuditLog(tmp_path / "audit")
    for i in range(N_ENTRIES):
        audit.append(
            actor=f"actor-{i}",
            action=f"test.step{i}",
            pipeline_key=pipeline_key,
            subjects={"dataset": f"sha256:{i:064x}"},
            details={"i": i, "note": f"step {i}"},
        )
    return audit


def read_lines(audit: AuditLog) -> list[bytes]:
    """The log's lines, each with its trailing newline."""
    return audit.log_path.read_bytes().splitlines(keepends=True)


def write_lines(audit: AuditLog, lines: list[bytes]) -> None:
    audit.log_path.write_bytes(b"".join(lines))


def line_of(data: dict) -> bytes:
    """Serializes an entry exactly as :meth:`AuditLog.append` does."""
    return (json.dumps(data, sort_keys=True, ensure_ascii=False) + "\n").encode()


def rehash(data: dict) -> dict:
    """Returns ``data`` with a correct ``hash`` for its (possibly edited) body."""
    body = {k: v for k, v in data.items() if k != "hash"}
    return {**body, "hash": hashlib.sha256(canonical_json(body)).hexdigest()}


def edit_line(audit: AuditLog, index: int, change: Callable[[dict], dict]) -> None:
    lines = read_lines(audit)
    lines[index] = line_of(change(json.loads(lines[index])))
    write_lines(audit, lines)


def refused(audit: AuditLog, key: PrivateKey, *fragments: str) -> RefusedError:
    """Asserts that verification is refused by the ``audit`` check with all ``fragments``."""
    with pytest.raises(RefusedError) as info:
        audit.verify(pipeline_public_key=key.public_pem)
    assert info.value.check == "audit"
    message = str(info.value)
    assert message.startswith("audit: ")
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# -- appending and verifying an intact log -------------------------------------------


def test_empty_log_verifies(tmp_path: Path, pipeline_key: PrivateKey) -> None:
    audit = AuditLog(tmp_path / "nothing-yet")
    check = audit.verify(pipeline_public_key=pipeline_key.public_pem)
    assert check.entries == 0
    assert check.head_hash == GENESIS
    assert audit.entries() == []
    assert not audit.directory.exists(), "verifying must not create the log's directory"


def test_append_builds_a_verifiable_chain(log: AuditLog, pipeline_key: PrivateKey) -> None:
    check = log.verify(pipeline_public_key=pipeline_key.public_pem)
    entries = log.entries()
    assert check.entries == N_ENTRIES == len(entries)
    assert check.head_hash == entries[-1].hash
    assert [e.seq for e in entries] == list(range(N_ENTRIES))
    assert entries[0].prev == GENESIS
    for before, after in itertools.pairwise(entries):
        assert after.prev == before.hash
    for i, entry in enumerate(entries):
        assert entry.hash == entry.compute_hash()
        assert len(entry.hash) == 64
        assert entry.actor == f"actor-{i}"
        assert entry.action == f"test.step{i}"
        assert entry.subjects == {"dataset": f"sha256:{i:064x}"}
        assert entry.details == {"i": i, "note": f"step {i}"}
        parse_utc(entry.time)  # the one timestamp format
    times = [parse_utc(e.time) for e in entries]
    assert times == sorted(times)


def test_append_returns_the_stored_entry(tmp_path: Path, pipeline_key: PrivateKey) -> None:
    audit = AuditLog(tmp_path / "a" / "b")  # folders are created
    first = audit.append(actor="me", action="one", pipeline_key=pipeline_key)
    second = audit.append(actor="me", action="two", pipeline_key=pipeline_key)
    assert audit.entries() == [first, second]
    assert first.subjects == {} and first.details == {}
    assert (first.seq, first.prev) == (0, GENESIS)
    assert (second.seq, second.prev) == (1, first.hash)


def test_head_is_signed_by_the_pipeline_key(log: AuditLog, pipeline_key: PrivateKey) -> None:
    head = json.loads(log.head_path.read_text())
    last = log.entries()[-1]
    assert head["seq"] == last.seq == N_ENTRIES - 1
    assert head["hash"] == last.hash
    assert head["key_id"] == pipeline_key.key_id
    assert isinstance(head["signature"], str) and head["signature"]


def test_body_excludes_only_the_hash(log: AuditLog) -> None:
    entry = log.entries()[0]
    body = entry.body()
    assert "hash" not in body
    assert set(body) == {"seq", "time", "actor", "action", "subjects", "details", "prev"}
    assert entry.compute_hash() == hashlib.sha256(canonical_json(body)).hexdigest()


def test_verify_with_another_public_key_is_refused(
    log: AuditLog, other_key: PrivateKey, pipeline_key: PrivateKey
) -> None:
    refused(log, other_key, "head signature does not verify with the pipeline key")
    # and the right key still passes: the refusal was about the key, not the log
    assert log.verify(pipeline_public_key=pipeline_key.public_pem).entries == N_ENTRIES


@pytest.mark.parametrize("text", ["line\u2028separator", "next\x85line", "para\u2029graph", "ü€😀"])
def test_unicode_in_entries_round_trips(
    tmp_path: Path, pipeline_key: PrivateKey, text: str
) -> None:
    # U+2028, U+2029 and U+0085 are not escaped by json.dumps(ensure_ascii=False);
    # they must not split an entry when the log is read back.
    audit = AuditLog(tmp_path / "audit")
    audit.append(actor="a", action="x", pipeline_key=pipeline_key, details={"reason": text})
    audit.append(actor="a", action=text, pipeline_key=pipeline_key)
    check = audit.verify(pipeline_public_key=pipeline_key.public_pem)
    assert check.entries == 2
    assert audit.entries()[0].details == {"reason": text}
    assert audit.entries()[1].action == text


def test_append_after_an_entry_larger_than_the_tail_chunk(
    tmp_path: Path, pipeline_key: PrivateKey
) -> None:
    # _last_entry reads the tail in 64 KiB chunks, doubling until it holds a whole line.
    audit = AuditLog(tmp_path / "audit")
    audit.append(actor="a", action="small", pipeline_key=pipeline_key)
    big = audit.append(
        actor="a", action="big", pipeline_key=pipeline_key, details={"blob": "x" * 200_000}
    )
    after = audit.append(actor="a", action="after", pipeline_key=pipeline_key)
    assert (big.seq, after.seq, after.prev) == (1, 2, big.hash)
    assert audit.verify(pipeline_public_key=pipeline_key.public_pem).entries == 3


def test_append_refuses_to_extend_a_corrupt_last_entry(
    log: AuditLog, pipeline_key: PrivateKey
) -> None:
    with log.log_path.open("ab") as fh:
        fh.write(b"{not json\n")
    with pytest.raises(RefusedError) as info:
        log.append(actor="a", action="x", pipeline_key=pipeline_key)
    assert info.value.check == "audit"
    assert "entry 5 (line 6): not a valid audit entry" in str(info.value)
    assert len(read_lines(log)) == N_ENTRIES + 1  # nothing was appended


# -- tampering with entries ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "test.innocent"),
        ("actor", "someone-else"),
        ("time", "2000-01-01T00:00:00.000000Z"),
        ("subjects", {"dataset": "sha256:" + "f" * 64}),
        ("details", {"i": 2, "note": "rewritten"}),
    ],
)
def test_editing_a_middle_entry_is_detected(
    log: AuditLog, pipeline_key: PrivateKey, field: str, value: object
) -> None:
    edit_line(log, 2, lambda d: {**d, field: value})
    refused(log, pipeline_key, "entry 2", "content was edited")


def test_editing_and_rehashing_breaks_the_next_link(
    log: AuditLog, pipeline_key: PrivateKey
) -> None:
    edit_line(log, 2, lambda d: rehash({**d, "action": "test.innocent"}))
    refused(log, pipeline_key, "entry 3", "previous-hash link broken")


def test_rewriting_the_whole_tail_is_caught_by_the_signed_head(
    log: AuditLog, pipeline_key: PrivateKey
) -> None:
    # Without the pipeline key, an attacker can recompute every hash after an edit,
    # but cannot re-sign the head.
    entries = [json.loads(line) for line in read_lines(log)]
    entries[2] = rehash({**entries[2], "action": "test.innocent"})
    for i in range(3, N_ENTRIES):
        entries[i] = rehash({**entries[i], "prev": entries[i - 1]["hash"]})
    write_lines(log, [line_of(e) for e in entries])
    refused(log, pipeline_key, f"entry {N_ENTRIES - 1}", "does not match the signed head")


def test_editing_and_rehashing_the_last_entry_is_detected(
    log: AuditLog, pipeline_key: PrivateKey
) -> None:
    last = N_ENTRIES - 1
    edit_line(log, last, lambda d: rehash({**d, "details": {}}))
    refused(log, pipeline_key, f"entry {last}", "does not match the signed head")


def test_deleting_a_middle_entry_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    lines = read_lines(log)
    del lines[2]
    write_lines(log, lines)
    refused(log, pipeline_key, "entry 2", "sequence number is 3", "reordered or removed")


def test_deleting_the_first_entry_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    write_lines(log, read_lines(log)[1:])
    refused(log, pipeline_key, "entry 0", "sequence number is 1")


def test_deleting_and_renumbering_breaks_the_link(log: AuditLog, pipeline_key: PrivateKey) -> None:
    lines = read_lines(log)
    del lines[2]
    lines[2:] = [line_of({**json.loads(line), "seq": i}) for i, line in enumerate(lines[2:], 2)]
    write_lines(log, lines)
    refused(log, pipeline_key, "entry 2", "previous-hash link broken")


def test_swapping_two_entries_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    lines = read_lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(log, lines)
    refused(log, pipeline_key, "entry 1", "sequence number is 2")


def test_inserting_a_naive_forged_entry_is_detected(
    log: AuditLog, pipeline_key: PrivateKey
) -> None:
    lines = read_lines(log)
    template = json.loads(lines[2])
    forged = {**template, "action": "forged", "actor": "mallory"}  # hash not recomputed
    lines.insert(2, line_of(forged))
    write_lines(log, lines)
    refused(log, pipeline_key, "entry 2", "content was edited")


def test_inserting_a_well_formed_forged_entry_is_detected(
    log: AuditLog, pipeline_key: PrivateKey
) -> None:
    # The forgery itself chains correctly onto entry 1; the entry after it no longer does.
    lines = read_lines(log)
    entry1 = json.loads(lines[1])
    forged = rehash({**json.loads(lines[2]), "seq": 2, "prev": entry1["hash"], "action": "forged"})
    lines.insert(2, line_of(forged))
    write_lines(log, lines)
    refused(log, pipeline_key, "entry 3", "sequence number is 2")


def test_inserting_and_renumbering_breaks_the_link(log: AuditLog, pipeline_key: PrivateKey) -> None:
    lines = read_lines(log)
    entry1 = json.loads(lines[1])
    forged = rehash({**json.loads(lines[2]), "seq": 2, "prev": entry1["hash"], "action": "forged"})
    rest = [line_of({**json.loads(line), "seq": i}) for i, line in enumerate(lines[2:], 3)]
    write_lines(log, [*lines[:2], line_of(forged), *rest])
    refused(log, pipeline_key, "entry 3", "previous-hash link broken")


def test_truncating_the_last_entry_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    write_lines(log, read_lines(log)[:-1])
    refused(
        log,
        pipeline_key,
        "log truncated",
        f"names entry {N_ENTRIES - 1}",
        f"ends at entry {N_ENTRIES - 2}",
    )


def test_truncating_everything_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    log.log_path.write_bytes(b"")
    refused(log, pipeline_key, "log truncated", f"names entry {N_ENTRIES - 1}")


def test_deleting_the_log_file_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    log.log_path.unlink()
    refused(log, pipeline_key, "log truncated")


def test_appending_after_the_signed_head_is_detected(
    log: AuditLog, pipeline_key: PrivateKey
) -> None:
    last = json.loads(read_lines(log)[-1])
    forged = rehash(
        {**last, "seq": N_ENTRIES, "prev": last["hash"], "action": "forged", "actor": "mallory"}
    )
    write_lines(log, [*read_lines(log), line_of(forged)])
    refused(log, pipeline_key, f"entry {N_ENTRIES}", "appended after the signed head")


def test_restoring_an_older_signed_head_is_detected(
    tmp_path: Path, pipeline_key: PrivateKey
) -> None:
    # A genuine but stale head.json (replayed) does not cover the later entries.
    audit = AuditLog(tmp_path / "audit")
    audit.append(actor="a", action="one", pipeline_key=pipeline_key)
    old_head = audit.head_path.read_bytes()
    audit.append(actor="a", action="two", pipeline_key=pipeline_key)
    audit.head_path.write_bytes(old_head)
    refused(audit, pipeline_key, "entry 1", "appended after the signed head")


# -- tampering with the head ---------------------------------------------------------


def test_replacing_the_head_signature_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    head = json.loads(log.head_path.read_text())
    other = json.loads(log.head_path.read_text())
    # a real signature by the right key, but over another claim
    other["signature"] = pipeline_key.sign(canonical_json({"seq": 0, "hash": head["hash"]}))
    log.head_path.write_text(json.dumps(other))
    refused(log, pipeline_key, "head signature does not verify")


def test_garbage_head_signature_is_detected(log: AuditLog, pipeline_key: PrivateKey) -> None:
    head = json.loads(log.head_path.read_text())
    log.head_path.write_text(json.dumps({**head, "signature": "not base64!"}))
    refused(log, pipeline_key, "head signature does not verify")


def test_head_signed_with_another_key_is_refused(
    log: AuditLog, pipeline_key: PrivateKey, other_key: PrivateKey
) -> None:
    # An attacker truncates the log and signs a matching head with their own key.
    write_lines(log, read_lines(log)[:-1])
    last = log.entries()[-1]
    claim = {"seq": last.seq, "hash": last.hash}
    forged = {
        **claim,
        "key_id": other_key.key_id,
        "signature": other_key.sign(canonical_json(claim)),
    }
    log.head_path.write_text(json.dumps(forged))
    refused(log, pipeline_key, "head signature does not verify with the pipeline key")


def test_head_seq_edited_is_refused(log: AuditLog, pipeline_key: PrivateKey) -> None:
    head = json.loads(log.head_path.read_text())
    log.head_path.write_text(json.dumps({**head, "seq": head["seq"] - 1}))
    refused(log, pipeline_key, "head signature does not verify")


def test_missing_head_is_refused(log: AuditLog, pipeline_key: PrivateKey) -> None:
    log.head_path.unlink()
    refused(log, pipeline_key, "head signature is missing")


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage"])
def test_head_not_json_is_refused(log: AuditLog, pipeline_key: PrivateKey, content: bytes) -> None:
    log.head_path.write_bytes(content)
    refused(log, pipeline_key, "head.json is not valid JSON")


@pytest.mark.parametrize("content", ["[1, 2]", "null", '"head"', "42"])
def test_head_not_an_object_is_refused(
    log: AuditLog, pipeline_key: PrivateKey, content: str
) -> None:
    log.head_path.write_text(content)
    refused(log, pipeline_key, "head.json is malformed")


# -- lines that are not entries ------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not json\n",
        b"\xff\xfe\xfd binary\n",
        b"\n",  # blank line
        b"[1, 2, 3]\n",
        b'{"seq": 2}\n',  # missing fields
        b"null\n",
    ],
    ids=["text", "binary", "blank", "list", "partial", "null"],
)
def test_non_entry_line_is_refused(log: AuditLog, pipeline_key: PrivateKey, garbage: bytes) -> None:
    lines = read_lines(log)
    lines.insert(2, garbage)
    write_lines(log, lines)
    refused(log, pipeline_key, "entry 2", "line 3", "not a valid audit entry")
    with pytest.raises(RefusedError, match="entry 2"):
        log.entries()


def test_entry_with_an_unknown_field_is_refused(log: AuditLog, pipeline_key: PrivateKey) -> None:
    edit_line(log, 1, lambda d: {**d, "extra": "field"})
    refused(log, pipeline_key, "entry 1", "not a valid audit entry")


def test_half_written_last_line_is_refused(log: AuditLog, pipeline_key: PrivateKey) -> None:
    data = log.log_path.read_bytes()
    log.log_path.write_bytes(data[:-20])  # a crash in the middle of the last write
    refused(log, pipeline_key, f"entry {N_ENTRIES - 1}", "not a valid audit entry")


def test_entries_round_trip_through_the_dataclass(log: AuditLog) -> None:
    for line, entry in zip(read_lines(log), log.entries(), strict=True):
        assert AuditEntry(**json.loads(line)) == entry


# -- appends refuse to extend a tail the pipeline did not sign -------------------------


@pytest.mark.parametrize("tamper", ["truncate", "forge"])
def test_next_append_does_not_launder_tampering(
    log: AuditLog, pipeline_key: PrivateKey, tamper: str
) -> None:
    lines = read_lines(log)
    if tamper == "truncate":
        write_lines(log, lines[:-2])
    else:
        last = json.loads(lines[-1])
        forged = rehash({**last, "seq": N_ENTRIES, "prev": last["hash"], "action": "forged"})
        write_lines(log, [*lines, line_of(forged)])
    refused(log, pipeline_key)  # detected now ...
    with pytest.raises(RefusedError, match="signed head"):
        log.append(actor="a", action="later", pipeline_key=pipeline_key)
    refused(log, pipeline_key)  # ... and still detected: the append changed nothing


# -- concurrency -------------------------------------------------------------------------

WORKER = """
import sys
from pathlib import Path
from aegis.audit import AuditLog
from aegis.crypto.keys import load_private_key

directory, key_path, worker, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
key = load_private_key(Path(key_path))
log = AuditLog(Path(directory))
for i in range(count):
    log.append(actor=worker, action="test.concurrent", pipeline_key=key, details={"i": i})
"""


def _spawn_writers(directory: Path, key: PrivateKey, workers: int, count: int) -> list:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(directory), str(key.path), f"w{n}", str(count)],
            env=env,
            stderr=subprocess.PIPE,
        )
        for n in range(workers)
    ]


def _wait(procs: list) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()


def test_concurrent_appends_from_several_processes(
    tmp_path: Path, pipeline_key: PrivateKey
) -> None:
    workers, count = 4, 25
    directory = tmp_path / "audit"
    _wait(_spawn_writers(directory, pipeline_key, workers, count))
    audit = AuditLog(directory)
    check = audit.verify(pipeline_public_key=pipeline_key.public_pem)
    entries = audit.entries()
    assert check.entries == len(entries) == workers * count
    assert [e.seq for e in entries] == list(range(workers * count))
    assert check.head_hash == entries[-1].hash
    for n in range(workers):
        mine = [e.details["i"] for e in entries if e.actor == f"w{n}"]
        assert mine == list(range(count))  # each writer's entries, all there, in order
    assert len(read_lines(audit)) == workers * count  # no torn or interleaved lines


def test_verify_while_others_append_sees_a_consistent_log(
    tmp_path: Path, pipeline_key: PrivateKey
) -> None:
    # Log and head are read as one snapshot; otherwise an append between the two reads
    # looks like truncation ("the signed head names entry N, the log ends at N-1").
    directory = tmp_path / "audit"
    audit = AuditLog(directory)
    audit.append(actor="main", action="start", pipeline_key=pipeline_key)
    procs = _spawn_writers(directory, pipeline_key, 2, 60)
    checks = 0
    try:
        while any(p.poll() is None for p in procs):
            audit.verify(pipeline_public_key=pipeline_key.public_pem)
            checks += 1
    finally:
        _wait(procs)
    assert checks > 0
    assert audit.verify(pipeline_public_key=pipeline_key.public_pem).entries == 121
