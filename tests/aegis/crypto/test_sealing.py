"""X25519 serving identities: age key files, sealing, and their trust-store entries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aegis.crypto.keys import PrivateKey, canonical_json, generate_key
from aegis.crypto.sealing import (
    generate_identity,
    load_identity,
    normalized_recipient,
    read_recipient_file,
    recipient_key_id,
    seal,
    unseal,
)
from aegis.crypto.truststore import P256, X25519, TrustStore
from aegis.errors import RefusedError, UsageError


@pytest.fixture
def admin(tmp_path: Path) -> PrivateKey:
    return generate_key(tmp_path / "admin.pem")


@pytest.fixture
def store(tmp_path: Path, admin: PrivateKey) -> TrustStore:
    return TrustStore.create(tmp_path / "trust.json", admin=admin, name="admin", owner="alice")


def test_an_identity_file_is_age_keygen_shaped_0600_with_its_recipient_beside(tmp_path):
    made = generate_identity(tmp_path / "host.age")
    assert os.stat(tmp_path / "host.age").st_mode & 0o777 == 0o600
    text = (tmp_path / "host.age").read_text()
    assert text.splitlines()[-1].startswith("AGE-SECRET-KEY-1")
    assert f"# public key: {made.recipient}" in text
    assert read_recipient_file(tmp_path / "host.age.pub") == made.recipient
    loaded = load_identity(tmp_path / "host.age")
    assert loaded.recipient == made.recipient and loaded.key_id == recipient_key_id(made.recipient)
    with pytest.raises(UsageError, match="already exists"):
        generate_identity(tmp_path / "host.age")


def test_a_readable_identity_or_a_pem_key_is_refused(tmp_path):
    generate_identity(tmp_path / "host.age")
    os.chmod(tmp_path / "host.age", 0o644)
    with pytest.raises(RefusedError) as info:
        load_identity(tmp_path / "host.age")
    assert info.value.check == "key-permissions"
    generate_key(tmp_path / "signing.pem")
    with pytest.raises(UsageError, match="not an age X25519 identity"):
        load_identity(tmp_path / "signing.pem")
    with pytest.raises(UsageError, match="not found"):
        load_identity(tmp_path / "nothing")


def test_recipients_are_normalized_and_checked(tmp_path):
    recipient = generate_identity(tmp_path / "a").recipient
    assert normalized_recipient(f"  {recipient.upper()}\n") == recipient
    flipped = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")  # checksum fails
    for bad in ("age1xyz", "ssh-ed25519 AAAA", flipped):
        with pytest.raises(UsageError):
            normalized_recipient(bad)


def test_seal_opens_only_with_a_recipient_and_refuses_a_changed_byte(tmp_path):
    a, b = generate_identity(tmp_path / "a"), generate_identity(tmp_path / "b")
    other = generate_identity(tmp_path / "c")
    sealed = seal(b"weights" * 1000, [a.recipient, b.recipient])
    assert b"weights" not in sealed
    assert unseal(sealed, a, what="x") == unseal(sealed, b, what="x") == b"weights" * 1000
    with pytest.raises(RefusedError, match="not sealed to identity") as info:
        unseal(sealed, other, what="x")
    assert info.value.check == "seal"
    changed = bytearray(sealed)
    changed[len(changed) // 2] ^= 0x01
    with pytest.raises(RefusedError, match="does not decrypt") as info:
        unseal(bytes(changed), a, what="x")
    assert info.value.check == "seal"
    with pytest.raises(RefusedError):
        unseal(sealed[:-10], a, what="x")


# -- the trust store -----------------------------------------------------------------------


def test_an_identity_entry_loads_verifies_and_never_signs(tmp_path, store, admin):
    made = generate_identity(tmp_path / "host.age")
    store.add_identity(name="host-a", owner="platform", recipient=made.recipient, admin=admin)
    loaded = TrustStore.load(store.path, anchor=admin.key_id)
    entry = loaded.get("host-a")
    assert (entry.key_type, entry.role, entry.public_key) == (X25519, "serving", made.recipient)
    assert entry.key_id == made.key_id == loaded.by_key_id(made.key_id).key_id
    assert loaded.get("admin").key_type == P256
    assert [r["key_type"] for r in loaded.to_json()] == [P256, X25519]
    with pytest.raises(RefusedError, match="never signs") as info:
        loaded.require_signer(made.key_id, role="serving", what="x", new=False)
    assert info.value.check == "signer"
    with pytest.raises(UsageError, match="already in the trust store"):
        store.add_identity(name="host-b", owner="platform", recipient=made.recipient, admin=admin)
    store.set_status("host-a", "revoked", reason="host lost", admin=admin)
    assert TrustStore.load(store.path, anchor=admin.key_id).get("host-a").status == "revoked"


def test_p256_adds_record_no_key_type_so_old_stores_keep_their_bytes(tmp_path, store, admin):
    key = generate_key(tmp_path / "ops.pem")
    store.add(name="ops", role="operator", owner="bob", public_pem=key.public_pem, admin=admin)
    changes = json.loads(store.path.read_text())["changes"]
    assert all("key_type" not in c["change"]["entry"] for c in changes)
    made = generate_identity(tmp_path / "host.age")
    store.add_identity(name="host-a", owner="platform", recipient=made.recipient, admin=admin)
    changes = json.loads(store.path.read_text())["changes"]
    assert changes[-1]["change"]["entry"]["key_type"] == X25519


def _append_signed(path: Path, admin: PrivateKey, entry: dict) -> None:
    """Appends an admin-signed add of ``entry`` by hand (the store's own checks bypassed)."""
    import hashlib

    data = json.loads(path.read_text())
    last = data["changes"][-1]
    change = {
        "op": "add", "entry": entry, "seq": len(data["changes"]),
        "prev": hashlib.sha256(canonical_json(last)).hexdigest(), "time": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    data["changes"].append(
        {"change": change, "signer": admin.key_id, "signature": admin.sign(canonical_json(change))}
    )
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "bad",
    [
        {"role": "approver"},  # an x25519 key holds only the serving role
        {"key_type": "ed25519"},  # unknown type
        {"key_type": P256},  # a recipient labelled as a P-256 key
    ],
)
def test_a_signed_but_ill_typed_identity_is_refused_on_load(tmp_path, store, admin, bad):
    made = generate_identity(tmp_path / "host.age")
    entry = {
        "name": "host-a", "role": "serving", "owner": "platform", "key_id": made.key_id,
        "public_key": made.recipient, "key_type": X25519,
    } | bad  # fmt: skip
    _append_signed(store.path, admin, entry)
    with pytest.raises(RefusedError, match="key type") as info:
        TrustStore.load(store.path, anchor=admin.key_id)
    assert info.value.check == "trust-store"
