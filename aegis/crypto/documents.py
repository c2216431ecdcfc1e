"""Signed JSON documents: promotion requests, approvals, quarantine releases.

A document is ``{"body": {...}, "key_id": hex, "signature": b64}``; the
signature covers the canonical JSON of the body, and the body's digest is
what other documents and audit entries bind to. The same bytes are kept in
the audit entry that records the decision, so the decision stands on the
audit log alone, whatever happens to the file copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from aegis.crypto.keys import PrivateKey, canonical_json, verify_signature
from aegis.crypto.truststore import TrustEntry, TrustStore
from aegis.errors import RefusedError


@dataclass(frozen=True)
class SignedDocument:
    """A document whose signature verified against a key in the trust store."""

    body: dict[str, Any]
    signer: TrustEntry
    digest: str  # sha256 of the canonical body

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))


def body_digest(body: dict[str, Any]) -> str:
    """``sha256:`` of the canonical JSON of ``body``."""
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def sign_document(key: PrivateKey, body: dict[str, Any]) -> dict[str, Any]:
    """The signed document of ``body`` (JSON-serializable, as stored and audited)."""
    return {"body": body, "key_id": key.key_id, "signature": key.sign(canonical_json(body))}


def verify_document(document: Any, *, kind: str, trust: TrustStore) -> SignedDocument:
    """Checks a document's shape, kind and signature against the trust store.

    Only the signature is checked: whether the signer may make this decision
    (role, status, owner, time) is the caller's rule.

    Raises:
        RefusedError: ``signature``: malformed, another kind, an unknown key, or a
            signature that does not verify.
    """
    try:
        body, key_id, signature = document["body"], document["key_id"], document["signature"]
        if not isinstance(body, dict) or body.get("kind") != kind:
            raise TypeError
    except (KeyError, TypeError):
        raise RefusedError("signature", f"not a {kind} document") from None
    entry = trust.by_key_id(str(key_id))
    if entry is None:
        raise RefusedError("signature", f"signed by an unknown key ({str(key_id)[:12]})")
    if not verify_signature(entry.public_key, canonical_json(body), str(signature)):
        raise RefusedError("signature", "signature does not verify (tampered or unsigned)")
    return SignedDocument(body=body, signer=entry, digest=body_digest(body))
