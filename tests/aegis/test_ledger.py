"""The verified ledger: verified once per command, refreshed incrementally, fresh against git.

Freshness is the python-tuf rule against rollback attacks: an older copy of
``.aegis/audit/`` (with or without an older trust store) is self-consistent,
but git recorded entries it lacks, so it is refused; an older trust store is
never signed on top of.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers import Env, pipeline_key

from aegis import ledger as ledger_module
from aegis import vcs
from aegis.audit import HEAD_FORMAT
from aegis.crypto.keys import canonical_json, load_private_key
from aegis.errors import AuditError, FreshnessError, TrustStoreError
from aegis.ledger import Action, Ledger
from aegis.trust_ops import change_status, new_key


def _keys(env: Env, name: str):
    return env.root.parent / "keys" / f"{name}.pem"


def _approver(env: Env, name: str = "bob", owner: str = "bob"):
    return new_key(
        env.ws, role="approver", name=name, owner=owner, out=_keys(env, name),
        admin_key=env.admin_key,
    )  # fmt: skip


def _snapshot_state(env: Env, dst):
    """A copy of ``.aegis/audit`` and ``.aegis/trust.json``, as a backup would hold them."""
    dst.mkdir()
    shutil.copytree(env.ws.audit_dir, dst / "audit")
    shutil.copy2(env.ws.trust_path, dst / "trust.json")
    return dst


def _restore(env: Env, saved, *, trust: bool = True) -> None:
    shutil.rmtree(env.ws.audit_dir)
    shutil.copytree(saved / "audit", env.ws.audit_dir)
    if trust:
        shutil.copy2(saved / "trust.json", env.ws.trust_path)


# -- verified once ---------------------------------------------------------------------------


def test_commands_verify_the_log_once(env, cli, monkeypatch):
    for args in (("status",), ("audit", "verify"), ("trust", "list"), ("quarantine", "list")):
        before = ledger_module.VERIFICATIONS
        result = cli("--workspace", env.root, *args)
        assert result.code == 0, (args, result.err)
        assert ledger_module.VERIFICATIONS - before == 1, args


def test_a_ledger_takes_in_what_others_append_verifying_only_that(env):
    reader = Ledger.load(env.ws)
    seen = len(reader.log)
    writer = Ledger.load(env.ws)
    with writer.locked():
        writer.append("test.note", actor="x", details={"n": 1})
        writer.append("test.note", actor="x", details={"n": 2})
    assert reader.refresh() == 2
    assert len(reader.log) == seen + 2
    assert [e.details["n"] for e in reader.log.by_action("test.note")] == [1, 2]
    assert reader.refresh() == 0


def test_refresh_refuses_a_line_appended_behind_the_pipelines_back(env):
    reader = Ledger.load(env.ws)
    last = json.loads(env.ws.audit().log_path.read_text().splitlines()[-1])
    forged = {**last, "seq": last["seq"] + 1, "prev": last["hash"], "action": "forged"}
    with env.ws.audit().log_path.open("a") as fh:
        fh.write(json.dumps(forged, sort_keys=True) + "\n")
    with pytest.raises(AuditError):
        reader.refresh()
    with pytest.raises(AuditError, match=r"entry \d+ \(forged\)"):
        Ledger.load(env.ws)


def test_a_format_1_head_is_verified_entry_by_entry_and_upgraded_by_the_next_append(env):
    log = env.ws.audit()
    head = json.loads(log.head_path.read_text())
    assert head["format"] == HEAD_FORMAT and head["size"] == log.log_path.stat().st_size
    key = pipeline_key(env.ws)
    claim = {"seq": head["seq"], "hash": head["hash"]}  # what Aegis 0.1 signed
    old = {**claim, "key_id": key.key_id, "signature": key.sign(canonical_json(claim))}
    log.head_path.write_text(json.dumps(old))
    ledger = Ledger.load(env.ws)
    with ledger.locked():
        ledger.append("test.note", actor="x")
    head = json.loads(log.head_path.read_text())
    assert head["format"] == HEAD_FORMAT and head["size"] == log.log_path.stat().st_size
    Ledger.load(env.ws)


def test_an_edit_anywhere_is_refused_and_never_laundered_by_an_append(env):
    ledger = Ledger.load(env.ws)
    path = env.ws.audit().log_path
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"trust.add"', b'"trust.adX"')
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="entry 1"):
        Ledger.load(env.ws)
    # a long-running ledger loaded before the edit signs the bytes it verified, never the
    # edited ones: its next head does not cover the file, so the edit stays detected
    with ledger.locked():
        ledger.append("test.note", actor="x")
    with pytest.raises(AuditError):
        Ledger.load(env.ws)


# -- freshness: older copies of the log and the trust store ----------------------------------


def test_an_older_copy_of_the_audit_log_is_refused(env, cli, tmp_path):
    saved = _snapshot_state(env, tmp_path / "backup")
    _approver(env)
    _restore(env, saved, trust=False)  # the log of before; git recorded the newer entries
    with pytest.raises(FreshnessError) as info:
        Ledger.load(env.ws)
    assert "older copy of .aegis/audit" in str(info.value)
    result = cli("--workspace", env.root, "audit", "verify")
    assert result.code == 1 and result.err.startswith("refused: freshness:"), result.err


def test_an_older_log_and_trust_store_together_cannot_undo_a_revocation(env, cli, tmp_path):
    _approver(env)
    saved = _snapshot_state(env, tmp_path / "backup")
    change_status(env.ws, "bob", status="revoked", reason="stolen laptop", admin_key=env.admin_key)
    _restore(env, saved)  # both consistent with each other, from before the revocation
    with pytest.raises(FreshnessError):
        Ledger.load(env.ws)
    for args in (("audit", "verify"), ("status",), ("ingest", env.dataset, "--name", "digits")):
        result = cli("--workspace", env.root, *args)
        assert result.code == 1 and "freshness" in result.err, (args, result.err)


def test_an_older_trust_store_is_never_signed_on_top_of(env, tmp_path):
    """Restoring trust.json, then the admin's next change would launder it: refused first."""
    old = tmp_path / "trust.json"
    shutil.copy2(env.ws.trust_path, old)
    _approver(env)
    change_status(env.ws, "bob", status="revoked", reason="stolen", admin_key=env.admin_key)
    shutil.copy2(old, env.ws.trust_path)  # bob's revocation (and key) undone
    restored = env.ws.trust_path.read_bytes()
    with pytest.raises(TrustStoreError, match="rolled back"):
        _approver(env, "carol", "carol")
    with pytest.raises(TrustStoreError):
        change_status(env.ws, "acme", status="retired", reason="x", admin_key=env.admin_key)
    assert env.ws.trust_path.read_bytes() == restored  # nothing signed on top
    assert not _keys(env, "carol").exists()


def test_trust_changes_are_audited_before_they_are_committed(env):
    _approver(env)
    entry = env.ws.audit().entries()[-1]
    assert entry.action == Action.TRUST_ADD
    message = vcs.git(env.root, "log", "-1", "--format=%B")
    assert message.startswith("trust: add approver key 'bob'")
    assert vcs.anchor_line(entry.seq, entry.hash) in message


def test_every_aegis_commit_and_tag_anchors_the_audit_log(env):
    anchors = vcs.audit_anchors(env.root)
    assert anchors, "aegis init and new_key commit with anchors"
    ledger = Ledger.load(env.ws)
    for anchor in anchors:
        assert ledger.holds(anchor.seq, anchor.hash), anchor


def test_a_workspace_without_anchors_is_anchored_on_first_use(env):
    # an older workspace: the same history, without the anchor trailers
    subprocess.run(
        ["git", "-C", str(env.root), "filter-branch", "-f", "--msg-filter",
         "grep -v '^Aegis-Audit: '", "--", "--all"],
        check=True, capture_output=True, env={"FILTER_BRANCH_SQUELCH_WARNING": "1",
                                              "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    subprocess.run(
        ["git", "-C", str(env.root), "update-ref", "-d", "refs/original/refs/heads/main"],
        check=True,
    )
    assert vcs.audit_anchors(env.root) == []
    entries = len(env.ws.audit().entries())
    Ledger.load(env.ws)
    last = env.ws.audit().entries()[-1]
    assert last.action == Action.AUDIT_ANCHORED and last.seq == entries
    assert [(a.seq, a.hash) for a in vcs.audit_anchors(env.root)] == [(last.seq, last.hash)]
    assert "anchor the audit log" in vcs.git(env.root, "log", "-1", "--format=%s")
    Ledger.load(env.ws)
    assert len(env.ws.audit().entries()) == entries + 1  # anchored once


def test_a_forged_anchor_past_the_log_is_a_refusal_not_a_crash(env):
    ledger = Ledger.load(env.ws)
    vcs.commit_empty(env.root, "planted", trailer=vcs.anchor_line(10**6, "f" * 64))
    with pytest.raises(FreshnessError, match="records entry 1000000"):
        Ledger.load(env.ws)
    assert ledger.log.last is not None


def test_an_anchor_quoted_inside_a_message_is_not_an_anchor(env):
    # Text a message quotes (a supplier's, an operator's) cannot plant one: only the trailer.
    quoted = vcs.anchor_line(10**6, "f" * 64)
    before = vcs.audit_anchors(env.root)
    vcs.commit_empty(env.root, f"ingest x\n\ncreated: 2026\n{quoted}\n\nmore text")
    assert vcs.audit_anchors(env.root) == before
    Ledger.load(env.ws)


def test_a_trailer_a_hook_adds_after_the_anchor_does_not_hide_it(env):
    ledger = Ledger.load(env.ws)
    with ledger.locked():
        ledger.append("test.note", actor="x")
    anchor = ledger.trailer()
    vcs.commit_empty(env.root, f"note\n\n{anchor}\nSigned-off-by: A <a@example.org>")
    assert (len(ledger.log) - 1, ledger.log.head_hash) in {
        (a.seq, a.hash) for a in vcs.audit_anchors(env.root)
    }


# -- typed queries ----------------------------------------------------------------------------


def test_typed_queries_answer_from_the_verified_log(env):
    from aegis.data.ingest import ingest

    ledger = env.ledger()
    actor, _ = ledger.actor(None)
    accepted = ingest(ledger, str(env.dataset), name="digits", actor=actor)
    ledger = env.ledger()
    record = ledger.accepted(accepted.digest)
    assert record is not None and record.name == "digits" and record.supplier == "acme"
    assert ledger.last_accepted("digits") == record
    assert ledger.last_accepted("other") is None and ledger.accepted("sha256:" + "0" * 64) is None
    assert ledger.open_intents() == [] and ledger.releases() == {}
    admin = load_private_key(env.admin_key)
    change_status(env.ws, "ops", status="retired", reason="rotated", admin_key=env.admin_key)
    ledger = env.ledger()
    ops = ledger.trust.get("ops")
    assert ledger.retired_at(ops.key_id) == len(ledger.log) - 1
    assert ledger.retired_at(admin.key_id) is None


# -- re-rooting: a trust store rebuilt from another admin -----------------------------------


def _reroot(env: Env, tmp_path, *, keep_pipeline: bool):
    """What an attacker with write access (and no key of ours) can build: a new root of trust.

    A new admin signs a new store; ``workspace.json`` names it; an appended
    ``trust.add`` records its head, and the log's head is signed again by a
    pipeline key the attacker holds (or, with ``keep_pipeline``, by ours, as
    an insider who stole the pipeline key but not the admin key would).
    """
    from aegis.audit import AuditLog
    from aegis.crypto.keys import generate_key
    from aegis.crypto.truststore import TrustStore

    admin = generate_key(tmp_path / "evil-admin.pem")
    pipeline = pipeline_key(env.ws) if keep_pipeline else generate_key(tmp_path / "evil-pipe.pem")
    env.ws.trust_path.unlink()
    store = TrustStore.create(env.ws.trust_path, admin=admin, name="admin", owner="evil")
    store.add(name="pipeline", role="pipeline", owner="evil", public_pem=pipeline.public_pem,
              admin=admin)  # fmt: skip
    meta = json.loads(env.ws.meta_path.read_text())
    meta |= {"trust_anchor": admin.key_id, "pipeline_key": pipeline.key_id}
    env.ws.meta_path.write_text(json.dumps(meta))
    log = AuditLog(env.ws.audit_dir)
    _raw, head = log.read()
    assert head is not None
    resigned = {**head.claim(), "key_id": pipeline.key_id}
    resigned["signature"] = pipeline.sign(canonical_json(head.claim()))
    log.head_path.write_text(json.dumps(resigned))
    log.append(actor=pipeline.key_id, action=Action.TRUST_ADD, pipeline_key=pipeline,
               subjects={"trust": "sha256:" + store.head})  # fmt: skip


@pytest.mark.parametrize("keep_pipeline", [False, True], ids=["new-pipeline-key", "stolen"])
def test_a_trust_store_rebuilt_from_another_root_is_refused(env, cli, tmp_path, keep_pipeline):
    _reroot(env, tmp_path, keep_pipeline=keep_pipeline)
    with pytest.raises(TrustStoreError, match=r"re-rooted|another root"):
        Ledger.load(env.ws)
    result = cli("--workspace", env.root, "audit", "verify")
    assert result.code == 1 and result.err.startswith("refused: trust-store:"), result.err
