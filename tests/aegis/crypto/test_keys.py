"""Tests of P-256 key files, key ids and detached signatures."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from aegis.crypto.keys import (
    PrivateKey,
    canonical_json,
    generate_key,
    key_id_of_pem,
    load_private_key,
    public_pem,
    require_signature,
    verify_signature,
)
from aegis.errors import RefusedError, UsageError


@pytest.fixture
def key(tmp_path: Path) -> PrivateKey:
    return generate_key(tmp_path / "k.pem")


def write_private(path: Path, private_key: object, password: bytes | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        private_key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    return path


def spki_pem(public_key: object) -> str:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def unknown_algorithm_pem(kind: str) -> bytes:
    """A well-formed PEM whose algorithm OID no library knows (1.3.101.127)."""
    k = ed25519.Ed25519PrivateKey.generate()
    if kind == "PRIVATE KEY":
        der = k.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        der = k.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    der = der.replace(bytes.fromhex("06032b6570"), bytes.fromhex("06032b657f"))
    return (
        f"-----BEGIN {kind}-----\n".encode()
        + base64.encodebytes(der)
        + (f"-----END {kind}-----\n".encode())
    )


# -- generate_key --------------------------------------------------------------------------


def test_generate_key_writes_a_private_0600_key_and_a_public_file(tmp_path: Path) -> None:
    path = tmp_path / "supplier.pem"
    key = generate_key(path)
    assert key.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = tmp_path / "supplier.pem.pub"
    assert pub.read_text() == key.public_pem
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert isinstance(key.key, ec.EllipticCurvePrivateKey)
    assert key.key.curve.name == "secp256r1"


def test_private_key_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key = generate_key(tmp_path / "k.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600


def test_generated_key_loads_back(key: PrivateKey) -> None:
    loaded = load_private_key(key.path)
    assert loaded.key_id == key.key_id
    assert loaded.public_pem == key.public_pem
    assert verify_signature(key.public_pem, b"data", loaded.sign(b"data"))


def test_each_key_is_new(tmp_path: Path) -> None:
    a = generate_key(tmp_path / "a.pem")
    b = generate_key(tmp_path / "b.pem")
    assert a.key_id != b.key_id


@pytest.mark.parametrize("existing", ["k.pem", "k.pem.pub"])
def test_generate_key_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(UsageError, match="already exists; refusing to overwrite"):
        generate_key(tmp_path / "k.pem")
    assert (tmp_path / existing).read_text() == "precious"
    other = "k.pem.pub" if existing == "k.pem" else "k.pem"
    assert not (tmp_path / other).exists()


def test_generate_key_refuses_to_overwrite_a_real_key(key: PrivateKey) -> None:
    before = key.path.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        generate_key(key.path)
    assert key.path.read_bytes() == before
    assert load_private_key(key.path).key_id == key.key_id


def test_generate_key_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    # Writing through a symlink could put the key somewhere the caller did not intend.
    (tmp_path / "k.pem").symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(UsageError, match="already exists"):
        generate_key(tmp_path / "k.pem")
    assert not (tmp_path / "elsewhere.pem").exists()


def test_generate_key_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such directory"):
        generate_key(tmp_path / "missing" / "k.pem")
    assert not (tmp_path / "missing").exists()


# -- load_private_key --------------------------------------------------------------------


def test_load_missing_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="key file not found"):
        load_private_key(tmp_path / "nope.pem")


def test_load_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read key"):
        load_private_key(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage, not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"\x00\xff\xfe binary",
    ],
    ids=["empty", "text", "bad-pem", "binary"],
)
def test_load_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        load_private_key(path)


def test_load_a_public_key_file(key: PrivateKey) -> None:
    pub = key.path.with_name(key.path.name + ".pub")
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        load_private_key(pub)


def test_load_an_encrypted_key(tmp_path: Path) -> None:
    path = write_private(tmp_path / "enc.pem", ec.generate_private_key(ec.SECP256R1()), b"pw")
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        load_private_key(path)


def test_load_a_key_of_an_unknown_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "odd.pem"
    path.write_bytes(unknown_algorithm_pem("PRIVATE KEY"))
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        load_private_key(path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: ec.generate_private_key(ec.SECP256K1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ],
    ids=["p384", "secp256k1", "ed25519", "rsa"],
)
def test_load_a_key_that_is_not_p256(tmp_path: Path, make) -> None:
    path = write_private(tmp_path / "other.pem", make())
    with pytest.raises(UsageError, match="not an ECDSA P-256 key"):
        load_private_key(path)


# -- key ids --------------------------------------------------------------------------------


def test_key_id_is_the_sha256_of_the_public_pem(key: PrivateKey) -> None:
    pem = key.path.with_name(key.path.name + ".pub").read_text()
    expected = hashlib.sha256(pem.encode()).hexdigest()
    assert key.key_id == expected == key_id_of_pem(pem) == key_id_of_pem(key.public_pem)
    assert len(key.key_id) == 64 and int(key.key_id, 16) >= 0


def test_public_pem_matches_the_private_key(key: PrivateKey) -> None:
    assert key.public_pem == public_pem(key.key.public_key())
    assert key.public_pem == spki_pem(key.key.public_key())


# -- signatures -----------------------------------------------------------------------------


def test_sign_and_verify_round_trip(key: PrivateKey) -> None:
    data = canonical_json({"model": "sha256:abc", "n": 1})
    signature = key.sign(data)
    base64.b64decode(signature, validate=True)  # base64 text
    assert verify_signature(key.public_pem, data, signature)
    require_signature(key.public_pem, data, signature, what="release")  # does not raise


def test_signatures_are_randomized_but_all_verify(key: PrivateKey) -> None:
    a, b = key.sign(b"x"), key.sign(b"x")
    assert a != b
    assert verify_signature(key.public_pem, b"x", a)
    assert verify_signature(key.public_pem, b"x", b)


def test_verify_fails_on_changed_data(key: PrivateKey) -> None:
    signature = key.sign(b"approve v1.0.0")
    assert not verify_signature(key.public_pem, b"approve v2.0.0", signature)
    assert not verify_signature(key.public_pem, b"", signature)


def test_verify_fails_with_another_key(key: PrivateKey, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "other.pem")
    assert not verify_signature(other.public_pem, b"data", key.sign(b"data"))


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "not base64 !!!",
        "AAAA=",  # bad padding
        base64.b64encode(b"\x00" * 64).decode(),  # base64, not DER
        base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode(),  # DER (1, 1)
    ],
    ids=["empty", "not-base64", "bad-padding", "zeros", "tiny-der"],
)
def test_verify_fails_without_raising_on_bad_signatures(key: PrivateKey, signature: str) -> None:
    assert verify_signature(key.public_pem, b"data", signature) is False


def test_verify_fails_on_a_truncated_signature(key: PrivateKey) -> None:
    raw = base64.b64decode(key.sign(b"data"))
    assert not verify_signature(key.public_pem, b"data", base64.b64encode(raw[:-1]).decode())
    assert not verify_signature(key.public_pem, b"data", base64.b64encode(raw + b"\0").decode())


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "not a pem",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        spki_pem(ed25519.Ed25519PrivateKey.generate().public_key()),
        spki_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()),
        unknown_algorithm_pem("PUBLIC KEY").decode(),
        None,
        42,
    ],
    ids=["empty", "text", "bad-pem", "ed25519", "rsa", "unknown-oid", "none", "int"],
)
def test_verify_fails_without_raising_on_bad_public_keys(key: PrivateKey, pem: object) -> None:
    assert verify_signature(pem, b"data", key.sign(b"data")) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("signature", [None, 42, b"bytes"])
def test_verify_fails_on_non_text_signatures(key: PrivateKey, signature: object) -> None:
    # bytes are accepted by b64decode, so only a real signature in bytes would pass
    assert verify_signature(key.public_pem, b"data", signature) is False  # type: ignore[arg-type]


def test_require_signature_raises_a_signature_refusal(key: PrivateKey) -> None:
    with pytest.raises(RefusedError) as info:
        require_signature(key.public_pem, b"changed", key.sign(b"data"), what="approval.json")
    assert info.value.check == "signature"
    assert str(info.value) == "signature: approval.json: signature does not verify"


# -- canonical JSON ------------------------------------------------------------------------


def test_canonical_json_is_deterministic() -> None:
    a = canonical_json({"b": 1, "a": [1, {"d": None, "c": "é"}]})
    b = canonical_json({"a": [1, {"c": "é", "d": None}], "b": 1})
    assert a == b == '{"a":[1,{"c":"é","d":null}],"b":1}'.encode()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_may_read_is_refused(key: PrivateKey, mode: int) -> None:
    key.path.chmod(mode)
    with pytest.raises(RefusedError) as info:
        load_private_key(key.path)
    assert info.value.check == "key-permissions"
    assert f"chmod 600 {key.path}" in str(info.value)
    key.path.chmod(0o600)
    assert load_private_key(key.path).key_id == key.key_id
