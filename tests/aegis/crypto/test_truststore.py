"""Tests of the signed trust store: chain of admin-signed changes, revoke vs retire."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis.crypto.keys import PrivateKey, canonical_json, generate_key
from aegis.crypto.truststore import FORMAT, TrustStore
from aegis.errors import RefusedError, UsageError

# -- fixtures and helpers ----------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, PrivateKey]:
    folder = tmp_path / "keys"
    folder.mkdir()
    names = ("admin", "admin2", "supplier", "operator", "approver", "pipeline", "outsider")
    return {name: generate_key(folder / f"{name}.pem") for name in names}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "trust.json"


@pytest.fixture
def store(path: Path, keys: dict[str, PrivateKey]) -> TrustStore:
    """admin (anchor) + supplier, operator, approver: four changes."""
    ts = TrustStore.create(path, admin=keys["admin"], name="admin", owner="alice")
    for role, owner in (("supplier", "data-team"), ("operator", "bob"), ("approver", "carol")):
        ts.add(
            name=role, role=role, owner=owner, public_pem=keys[role].public_pem, admin=keys["admin"]
        )
    return ts


def load(path: Path, keys: dict[str, PrivateKey]) -> TrustStore:
    return TrustStore.load(path, anchor=keys["admin"].key_id)


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = read(path)
    change(data)
    path.write_text(json.dumps(data, indent=1))


def refused_on_load(path: Path, keys: dict[str, PrivateKey], *fragments: str) -> None:
    with pytest.raises(RefusedError) as info:
        load(path, keys)
    assert info.value.check == "trust-store"
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


def signed_record(data: dict[str, Any], change: dict[str, Any], key: PrivateKey) -> dict:
    """A correctly chained record for ``change``, signed by ``key`` (bypassing the API)."""
    records = data["changes"]
    change = {
        **change,
        "seq": len(records),
        "prev": record_hash(records[-1]),
        "time": "2030-01-01T00:00:00.000000Z",
    }
    return {"change": change, "signer": key.key_id, "signature": key.sign(canonical_json(change))}


def entry_for(name: str, role: str, owner: str, key: PrivateKey) -> dict[str, str]:
    return {
        "name": name,
        "role": role,
        "owner": owner,
        "key_id": key.key_id,
        "public_key": key.public_pem,
    }


# -- creating, adding, loading ---------------------------------------------------------


def test_create_makes_a_self_signed_anchor(path: Path, keys: dict[str, PrivateKey]) -> None:
    ts = TrustStore.create(path, admin=keys["admin"], name="admin", owner="alice")
    assert path.is_file()
    (entry,) = ts.entries
    assert (entry.name, entry.role, entry.owner, entry.status) == (
        "admin",
        "admin",
        "alice",
        "active",
    )
    assert entry.key_id == keys["admin"].key_id
    assert entry.public_key == keys["admin"].public_pem
    assert entry.added_at and entry.added_at == entry.changed_at
    data = read(path)
    assert data["format"] == FORMAT
    (record,) = data["changes"]
    assert record["signer"] == keys["admin"].key_id
    assert record["change"]["seq"] == 0 and record["change"]["prev"] is None
    assert [e.name for e in load(path, keys).entries] == ["admin"]


def test_create_refuses_an_existing_file(store: TrustStore, keys: dict[str, PrivateKey]) -> None:
    before = store.path.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        TrustStore.create(store.path, admin=keys["admin2"], name="admin", owner="x")
    assert store.path.read_bytes() == before


def test_load_verifies_and_returns_every_entry(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    loaded = load(path, keys)
    assert loaded.entries == store.entries
    assert loaded.head == store.head
    got = {e.name: (e.role, e.owner, e.status, e.key_id) for e in loaded.entries}
    assert got == {
        "admin": ("admin", "alice", "active", keys["admin"].key_id),
        "supplier": ("supplier", "data-team", "active", keys["supplier"].key_id),
        "operator": ("operator", "bob", "active", keys["operator"].key_id),
        "approver": ("approver", "carol", "active", keys["approver"].key_id),
    }
    assert loaded.get("supplier").public_key == keys["supplier"].public_pem
    assert loaded.by_key_id(keys["operator"].key_id).name == "operator"
    assert loaded.by_key_id(keys["outsider"].key_id) is None
    with pytest.raises(UsageError, match="no trust entry named 'nobody'"):
        loaded.get("nobody")


def test_to_json_leaves_out_public_keys(store: TrustStore) -> None:
    rows = store.to_json()
    assert [r["name"] for r in rows] == ["admin", "supplier", "operator", "approver"]
    assert all("public_key" not in r and r["key_id"] for r in rows)
    json.dumps(rows)  # serializable


def test_one_owner_may_hold_several_keys(store: TrustStore, keys: dict[str, PrivateKey]) -> None:
    store.add(
        name="bob-approver",
        role="approver",
        owner="bob",
        public_pem=keys["outsider"].public_pem,
        admin=keys["admin"],
    )
    owners = [e.owner for e in load(store.path, keys).entries]
    assert owners.count("bob") == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "root"}, "unknown role 'root'"),
        ({"name": "supplier"}, "named 'supplier' already exists"),
        ({"key": "supplier"}, "already in the trust store"),
        ({"name": "bad name"}, "key name 'bad name'"),
        ({"name": ""}, "key name ''"),
        ({"name": "../x"}, "key name '../x'"),
        ({"owner": "  "}, "owner must not be empty"),
    ],
)
def test_add_refuses_bad_input(
    store: TrustStore, keys: dict[str, PrivateKey], kwargs: dict[str, str], message: str
) -> None:
    before = (store.path.read_bytes(), store.head)
    args = {"name": "new", "role": "operator", "owner": "dave", "key": "outsider", **kwargs}
    with pytest.raises(UsageError, match=re.escape(message)):
        store.add(
            name=args["name"],
            role=args["role"],
            owner=args["owner"],
            public_pem=keys[args["key"]].public_pem,
            admin=keys["admin"],
        )
    assert (store.path.read_bytes(), store.head) == before


def test_names_may_use_dots_dashes_and_underscores(
    store: TrustStore, keys: dict[str, PrivateKey]
) -> None:
    store.add(
        name="ops_team-2.key",
        role="pipeline",
        owner="aegis",
        public_pem=keys["pipeline"].public_pem,
        admin=keys["admin"],
    )
    assert load(store.path, keys).get("ops_team-2.key").role == "pipeline"


def test_head_changes_after_every_change(store: TrustStore, keys: dict[str, PrivateKey]) -> None:
    heads = [store.head]
    store.add(
        name="admin2",
        role="admin",
        owner="dave",
        public_pem=keys["admin2"].public_pem,
        admin=keys["admin"],
    )
    heads.append(store.head)
    store.set_status("operator", "retired", reason="rotated", admin=keys["admin"])
    heads.append(store.head)
    store.set_status("supplier", "revoked", reason="leaked", admin=keys["admin2"])
    heads.append(store.head)
    assert len(set(heads)) == len(heads)
    assert store.head == record_hash(read(store.path)["changes"][-1])
    assert load(store.path, keys).head == store.head


# -- what load refuses ---------------------------------------------------------------------


def test_load_with_another_anchor_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    with pytest.raises(RefusedError) as info:
        TrustStore.load(path, anchor=keys["admin2"].key_id)
    assert info.value.check == "trust-store"
    assert "trust store change 0" in str(info.value)
    assert "not the workspace's anchor admin" in str(info.value)


def test_store_rebuilt_from_scratch_by_another_admin_is_refused(
    tmp_path: Path, path: Path, keys: dict[str, PrivateKey]
) -> None:
    # An attacker who can write trust.json makes a brand-new, validly signed store.
    forged = tmp_path / "forged.json"
    ts = TrustStore.create(forged, admin=keys["outsider"], name="admin", owner="alice")
    ts.add(
        name="supplier",
        role="supplier",
        owner="mallory",
        public_pem=keys["supplier"].public_pem,
        admin=keys["outsider"],
    )
    path.write_bytes(forged.read_bytes())
    refused_on_load(path, keys, "change 0", "anchor admin")


def test_change_appended_by_an_unknown_key_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    def forge(data: dict[str, Any]) -> None:
        entry = entry_for("mallory", "admin", "mallory", keys["outsider"])
        data["changes"].append(signed_record(data, {"op": "add", "entry": entry}, keys["outsider"]))

    rewrite(path, forge)
    refused_on_load(path, keys, "change 4", "signed by an unknown key")


def test_change_signed_on_disk_by_a_non_admin_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    def forge(data: dict[str, Any]) -> None:
        entry = entry_for("sneaky", "supplier", "mallory", keys["outsider"])
        data["changes"].append(signed_record(data, {"op": "add", "entry": entry}, keys["supplier"]))

    rewrite(path, forge)
    refused_on_load(path, keys, "change 4", "signed by 'supplier'", "not an active admin")


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("change 2", lambda d: d["changes"][2]["change"]["entry"].update(role="admin")),
        ("change 1", lambda d: d["changes"][1]["change"]["entry"].update(owner="mallory")),
        ("change 3", lambda d: d["changes"][3]["change"].update(time="2000-01-01T00:00:00Z")),
        ("change 1", lambda d: d["changes"][1]["change"]["entry"].update(name="renamed")),
        ("change 2", lambda d: d["changes"][2].update(signature=d["changes"][1]["signature"])),
        ("change 2", lambda d: d["changes"][2].update(signature="%%% not base64")),
    ],
    ids=["role", "owner", "time", "name", "copied-signature", "garbage-signature"],
)
def test_hand_edit_breaks_a_signature(
    store: TrustStore,
    path: Path,
    keys: dict[str, PrivateKey],
    where: str,
    edit: Callable[[dict], None],
) -> None:
    rewrite(path, edit)
    refused_on_load(path, keys, f"trust store {where}", "signature does not verify")


def test_swapping_in_another_public_key_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    # the attacker swaps the supplier's public key (and key id) for their own
    def swap(data: dict[str, Any]) -> None:
        data["changes"][1]["change"]["entry"].update(
            public_key=keys["outsider"].public_pem, key_id=keys["outsider"].key_id
        )

    rewrite(path, swap)
    refused_on_load(path, keys, "change 1", "signature does not verify")


def test_swapping_the_anchor_public_key_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    def swap(data: dict[str, Any]) -> None:
        data["changes"][0]["change"]["entry"]["public_key"] = keys["outsider"].public_pem

    rewrite(path, swap)
    refused_on_load(path, keys, "change 0", "anchor admin")


def test_changing_the_signer_field_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    rewrite(path, lambda d: d["changes"][2].update(signer=keys["supplier"].key_id))
    refused_on_load(path, keys, "change 2", "not an active admin")


def test_editing_an_earlier_change_and_its_signature_breaks_the_chain(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    # Even a correctly re-signed change (say, by a stolen admin key) changes the record
    # hash that the next change names.
    def resign(data: dict[str, Any]) -> None:
        change = data["changes"][1]["change"]
        change["entry"]["owner"] = "mallory"
        data["changes"][1]["signature"] = keys["admin"].sign(canonical_json(change))

    rewrite(path, resign)
    refused_on_load(path, keys, "trust store change 2", "hash chain broken")


def test_deleting_a_middle_change_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    rewrite(path, lambda d: d["changes"].pop(2))
    refused_on_load(path, keys, "trust store change 2", "hash chain broken")


def test_deleting_the_first_change_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    rewrite(path, lambda d: d["changes"].pop(0))
    refused_on_load(path, keys, "trust store change 0", "hash chain broken")


def test_reordering_changes_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    def swap(data: dict[str, Any]) -> None:
        changes = data["changes"]
        changes[1], changes[2] = changes[2], changes[1]

    rewrite(path, swap)
    refused_on_load(path, keys, "trust store change 1", "hash chain broken")


def test_dropping_the_last_change_is_only_visible_in_the_head(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    # A prefix of a valid store is itself a valid store: load() alone cannot tell that
    # the revocation was undone. The head hash, recorded in the audit log on every
    # change, is what catches such a rollback (Workspace.verify_audit).
    store.set_status("supplier", "revoked", reason="leaked", admin=keys["admin"])
    head = store.head
    rewrite(path, lambda d: d["changes"].pop())
    rolled_back = load(path, keys)
    assert rolled_back.get("supplier").status == "active"
    assert rolled_back.head != head


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "unknown format"),
        ('{"format": "aegis-trust/0", "changes": []}', "unknown format"),
        ('{"changes": []}', "unknown format"),
        (json.dumps({"format": FORMAT, "changes": []}), "no changes (unsigned store)"),
        (json.dumps({"format": FORMAT}), "no changes (unsigned store)"),
        (json.dumps({"format": FORMAT, "changes": {"0": {}}}), "no changes (unsigned store)"),
    ],
)
def test_unreadable_or_unsigned_store_is_refused(
    path: Path, keys: dict[str, PrivateKey], content: str, message: str
) -> None:
    path.write_text(content)
    refused_on_load(path, keys, message)


def test_non_utf8_store_is_refused(path: Path, keys: dict[str, PrivateKey]) -> None:
    path.write_bytes(b"\xff\xfe{}")
    refused_on_load(path, keys, "not valid JSON")


def test_missing_store_is_refused(path: Path, keys: dict[str, PrivateKey]) -> None:
    refused_on_load(path, keys, "missing")


@pytest.mark.parametrize(
    ("index", "edit"),
    [
        (1, lambda r: r.pop("signature")),
        (1, lambda r: r.pop("change")),
        (2, lambda r: r["change"].pop("seq")),
        (0, lambda r: r["change"]["entry"].update(extra="field")),
        (0, lambda r: r["change"].update(entry=["not", "a", "mapping"])),
        (0, lambda r: r["change"]["entry"].update(public_key=42)),
        (1, lambda r: r.update(change="a string")),
    ],
    ids=["no-signature", "no-change", "no-seq", "anchor-extra", "anchor-list", "anchor-int", "str"],
)
def test_malformed_records_are_refused(
    store: TrustStore,
    path: Path,
    keys: dict[str, PrivateKey],
    index: int,
    edit: Callable[[dict], None],
) -> None:
    rewrite(path, lambda d: edit(d["changes"][index]))
    refused_on_load(path, keys, f"trust store change {index}")


def test_a_record_that_is_not_a_mapping_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    rewrite(path, lambda d: d["changes"].__setitem__(1, ["change", "signer", "signature"]))
    refused_on_load(path, keys, "trust store change 1", "malformed")


# -- signing changes through the API ---------------------------------------------------


@pytest.mark.parametrize("signer", ["supplier", "operator", "pipeline", "outsider"])
def test_only_an_admin_may_change_the_store(
    store: TrustStore, keys: dict[str, PrivateKey], signer: str
) -> None:
    if signer == "pipeline":
        store.add(
            name="pipeline",
            role="pipeline",
            owner="aegis",
            public_pem=keys["pipeline"].public_pem,
            admin=keys["admin"],
        )
    before = (store.path.read_bytes(), store.head, store.entries)
    with pytest.raises(RefusedError) as info:
        store.add(
            name="admin2",
            role="admin",
            owner="mallory",
            public_pem=keys["admin2"].public_pem,
            admin=keys[signer],
        )
    assert info.value.check == "signer"
    assert "trust store changes need an admin key" in str(info.value)
    with pytest.raises(RefusedError) as info:
        store.set_status("operator", "revoked", reason="x", admin=keys[signer])
    assert info.value.check == "signer"
    assert (store.path.read_bytes(), store.head, store.entries) == before
    assert load(store.path, keys).entries == store.entries


@pytest.mark.parametrize("status", ["revoked", "retired"])
def test_a_revoked_or_retired_admin_can_no_longer_sign(
    store: TrustStore, keys: dict[str, PrivateKey], status: str
) -> None:
    store.add(
        name="admin2",
        role="admin",
        owner="dave",
        public_pem=keys["admin2"].public_pem,
        admin=keys["admin"],
    )
    store.set_status("admin", status, reason="rotation", admin=keys["admin2"])
    with pytest.raises(RefusedError) as info:
        store.add(
            name="late",
            role="operator",
            owner="x",
            public_pem=keys["outsider"].public_pem,
            admin=keys["admin"],
        )
    assert info.value.check == "signer"
    assert f"admin key 'admin' is {status}" in str(info.value)
    # The changes it signed before are still part of a valid history.
    loaded = load(store.path, keys)
    assert loaded.get("admin").status == status
    assert loaded.get("supplier").status == "active"
    # The remaining admin still signs.
    store.add(
        name="late",
        role="operator",
        owner="x",
        public_pem=keys["outsider"].public_pem,
        admin=keys["admin2"],
    )
    assert load(store.path, keys).get("late").role == "operator"


def test_change_signed_on_disk_by_a_revoked_admin_is_refused(
    store: TrustStore, path: Path, keys: dict[str, PrivateKey]
) -> None:
    store.add(
        name="admin2",
        role="admin",
        owner="dave",
        public_pem=keys["admin2"].public_pem,
        admin=keys["admin"],
    )
    store.set_status("admin", "revoked", reason="stolen", admin=keys["admin2"])

    def forge(data: dict[str, Any]) -> None:
        change = {"op": "revoke", "name": "admin2", "reason": "mallory"}
        data["changes"].append(signed_record(data, change, keys["admin"]))

    rewrite(path, forge)
    refused_on_load(path, keys, "change 6", "signed by 'admin'", "not an active admin at the time")


def test_revoking_or_retiring_the_last_active_admin_is_refused(
    store: TrustStore, keys: dict[str, PrivateKey]
) -> None:
    before = store.head
    for status in ("revoked", "retired"):
        with pytest.raises(UsageError, match="'admin' is the last active admin"):
            store.set_status("admin", status, reason="oops", admin=keys["admin"])
    assert store.head == before
    # With a second admin, the first may go; then the second is the last one.
    store.add(
        name="admin2",
        role="admin",
        owner="dave",
        public_pem=keys["admin2"].public_pem,
        admin=keys["admin"],
    )
    store.set_status("admin", "retired", reason="rotated", admin=keys["admin"])
    with pytest.raises(UsageError, match="'admin2' is the last active admin"):
        store.set_status("admin2", "revoked", reason="oops", admin=keys["admin2"])
    # A retired admin may still be revoked later (found compromised).
    store.set_status("admin", "revoked", reason="found leaked", admin=keys["admin2"])
    assert load(store.path, keys).get("admin").status == "revoked"


def test_set_status_refuses_repeats_and_unknown_statuses(
    store: TrustStore, keys: dict[str, PrivateKey]
) -> None:
    store.set_status("operator", "retired", reason="rotated", admin=keys["admin"])
    with pytest.raises(UsageError, match="'operator' is already retired"):
        store.set_status("operator", "retired", reason="again", admin=keys["admin"])
    store.set_status("operator", "revoked", reason="leaked later", admin=keys["admin"])
    for status in ("revoked", "retired"):
        with pytest.raises(UsageError, match="'operator' is already revoked"):
            store.set_status("operator", status, reason="again", admin=keys["admin"])
    before = store.head
    for status in ("active", "deleted", ""):
        with pytest.raises(UsageError, match="unknown status"):
            store.set_status("supplier", status, reason="x", admin=keys["admin"])
    with pytest.raises(UsageError, match="no trust entry named 'ghost'"):
        store.set_status("ghost", "revoked", reason="x", admin=keys["admin"])
    assert store.head == before
    assert load(store.path, keys).get("supplier").status == "active"


def test_status_changes_are_recorded_with_reason_and_time(
    store: TrustStore, keys: dict[str, PrivateKey]
) -> None:
    store.set_status("supplier", "revoked", reason="key leaked", admin=keys["admin"])
    entry = load(store.path, keys).get("supplier")
    assert (entry.status, entry.reason) == ("revoked", "key leaked")
    assert entry.changed_at >= entry.added_at
    ops = [r["change"]["op"] for r in read(store.path)["changes"]]
    assert ops == ["add", "add", "add", "add", "revoke"]


# -- require_signer: revoke vs retire ------------------------------------------------------


def test_require_signer_accepts_an_active_key(
    store: TrustStore, keys: dict[str, PrivateKey]
) -> None:
    for new in (True, False):
        entry = store.require_signer(
            keys["supplier"].key_id, role="supplier", what="dataset", new=new
        )
        assert entry.name == "supplier"


def test_retired_key_verifies_old_signatures_but_signs_nothing_new(
    store: TrustStore, keys: dict[str, PrivateKey]
) -> None:
    store.set_status("supplier", "retired", reason="rotated", admin=keys["admin"])
    store = load(store.path, keys)
    kid = keys["supplier"].key_id
    assert store.require_signer(kid, role="supplier", what="old dataset", new=False).name == (
        "supplier"
    )
    with pytest.raises(RefusedError) as info:
        store.require_signer(kid, role="supplier", what="new dataset", new=True)
    assert info.value.check == "signer"
    assert "new dataset: key 'supplier' is retired" in str(info.value)


@pytest.mark.parametrize("new", [True, False])
def test_revoked_key_verifies_nothing(
    store: TrustStore, keys: dict[str, PrivateKey], new: bool
) -> None:
    store.set_status("supplier", "revoked", reason="leaked", admin=keys["admin"])
    store = load(store.path, keys)
    with pytest.raises(RefusedError) as info:
        store.require_signer(keys["supplier"].key_id, role="supplier", what="dataset", new=new)
    assert info.value.check == "signer"
    assert "dataset: signer 'supplier' is revoked" in str(info.value)


def test_revoked_after_retired_verifies_nothing(
    store: TrustStore, keys: dict[str, PrivateKey]
) -> None:
    store.set_status("supplier", "retired", reason="rotated", admin=keys["admin"])
    store.set_status("supplier", "revoked", reason="old key leaked", admin=keys["admin"])
    with pytest.raises(RefusedError, match="is revoked") as info:
        load(store.path, keys).require_signer(
            keys["supplier"].key_id, role="supplier", what="old dataset", new=False
        )
    assert info.value.check == "signer"


@pytest.mark.parametrize("new", [True, False])
def test_require_signer_refuses_the_wrong_role(
    store: TrustStore, keys: dict[str, PrivateKey], new: bool
) -> None:
    with pytest.raises(RefusedError) as info:
        store.require_signer(keys["operator"].key_id, role="approver", what="approval", new=new)
    assert info.value.check == "signer"
    message = str(info.value)
    assert "approval: signer 'operator'" in message
    assert "operator" in message.split("signer 'operator'")[1] and "approver" in message


@pytest.mark.parametrize("new", [True, False])
def test_require_signer_refuses_an_unknown_key(
    store: TrustStore, keys: dict[str, PrivateKey], new: bool
) -> None:
    kid = keys["outsider"].key_id
    with pytest.raises(RefusedError) as info:
        store.require_signer(kid, role="supplier", what="dataset", new=new)
    assert info.value.check == "signer"
    assert f"dataset: signed by an unknown key ({kid[:12]})" in str(info.value)
