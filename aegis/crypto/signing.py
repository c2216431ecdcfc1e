"""Signing a directory and verifying its bundle, with a key or with Sigstore: one strategy.

Datasets (supplier keys) and releases (the pipeline key, or Sigstore
keyless) are signed the same way: model_signing's bundle over every file
(``ignore_git_paths=False``) except the bundle itself. :func:`signing_config`
is the one place a signer is configured; :func:`verify_bundle` the one place
a bundle's signature is checked, for either kind, returning the signed
digests (file hashing and comparison are :mod:`aegis.crypto.bundle`'s).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aegis.crypto.bundle import SignedDigests, hashing_config, read_bundle_key_id
from aegis.errors import ConfigError, RefusedError
from aegis.fileutil import read_regular

BUNDLE_LIMIT = 64 * 1024 * 1024  # a bundle lists one hash per file: far below this


@dataclass(frozen=True)
class KeySigner:
    """Sign with an ECDSA P-256 private key file."""

    private_key: Path


@dataclass(frozen=True)
class SigstoreSigner:
    """Sign keylessly with Sigstore (needs the network and an OIDC identity)."""

    oidc_issuer: str
    use_staging: bool = False


@dataclass(frozen=True)
class KeyIdentity:
    """A bundle must be signed by this public key (PEM)."""

    public_key: str


@dataclass(frozen=True)
class SigstoreIdentity:
    """A bundle must carry a Sigstore certificate for this identity and issuer."""

    identity: str
    oidc_issuer: str
    use_staging: bool = False


def signing_config(signer: KeySigner | SigstoreSigner, *, bundle_name: str):
    """model_signing's signing config for ``signer``, hashing everything but the bundle."""
    from model_signing import signing

    config = signing.Config()
    if isinstance(signer, SigstoreSigner):
        config = config.use_sigstore_signer(
            oidc_issuer=signer.oidc_issuer, use_staging=signer.use_staging
        )
    else:
        config = config.use_elliptic_key_signer(private_key=signer.private_key)
    return config.set_hashing_config(hashing_config([bundle_name]))


def sign_directory(
    directory: Path, *, bundle_name: str, signer: KeySigner | SigstoreSigner
) -> Path:
    """Signs every file under ``directory`` into ``directory/bundle_name``."""
    bundle = directory / bundle_name
    signing_config(signer, bundle_name=bundle_name).sign(directory, bundle)
    return bundle


def bundle_kind(bundle: Path) -> tuple[str, str | None]:
    """``("key", key id)`` or ``("sigstore", None)``, from the unverified bundle.

    Raises:
        RefusedError: ``bundle``: missing, not a regular file, not JSON, or no key hint.
    """
    try:
        data = json.loads(read_regular(bundle, limit=BUNDLE_LIMIT, what=bundle.name))
    except FileNotFoundError:
        raise RefusedError("bundle", f"signature bundle '{bundle.name}' is missing") from None
    except RefusedError as exc:
        raise RefusedError("bundle", exc.detail) from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise RefusedError("bundle", f"'{bundle.name}' is not valid JSON (truncated?)") from None
    material = data.get("verificationMaterial") if isinstance(data, dict) else None
    if isinstance(material, dict) and (
        "certificate" in material or "x509CertificateChain" in material
    ):
        return "sigstore", None
    return "key", read_bundle_key_id(bundle)


def verify_bundle(bundle: Path, *, expected: KeyIdentity | SigstoreIdentity) -> SignedDigests:
    """Checks the bundle's signature for ``expected``; returns the digests it signs.

    No file is hashed here: compare the digests with the directory's
    (:func:`aegis.crypto.bundle.compare_digests`).

    Raises:
        RefusedError: ``bundle`` (unreadable) or ``signature`` (does not verify
            for ``expected``).
    """
    from model_signing._signing import sign_ec_key, sign_sigstore, sign_sigstore_pb

    kind, key_id = bundle_kind(bundle)
    try:
        if isinstance(expected, SigstoreIdentity):
            if kind != "sigstore":
                raise RefusedError("signature", f"'{bundle.name}' is not a Sigstore bundle")
            verifier = sign_sigstore.Verifier(
                identity=expected.identity,
                oidc_issuer=expected.oidc_issuer,
                use_staging=expected.use_staging,
            )
            manifest = verifier.verify(sign_sigstore.Signature.read(bundle))
            who = expected.identity
        else:
            if kind != "key":
                raise RefusedError(
                    "signature", f"'{bundle.name}' is a Sigstore bundle, not a key's"
                )
            # model_signing's verifier reads the public key from a file: the one place it is written
            with tempfile.TemporaryDirectory(prefix="aegis-pub-") as tmp:
                pub = Path(tmp) / "signer.pub"
                pub.write_text(expected.public_key)
                manifest = sign_ec_key.Verifier(pub).verify(sign_sigstore_pb.Signature.read(bundle))
            who = str(key_id)
    except RefusedError:
        raise
    except Exception as exc:  # model_signing and sigstore raise many types for a bad bundle
        raise RefusedError(
            "signature", f"'{bundle.name}' does not verify ({type(exc).__name__})"
        ) from None
    files = {str(rd.identifier): rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    return SignedDigests(key_id=who, files=files)


def require_sigstore_identity(identity: str | None, oidc_issuer: str | None) -> tuple[str, str]:
    """The identity and OIDC issuer Sigstore verification requires.

    Raises:
        ConfigError: Either is not set in ``params.yaml`` (``sign.identity``, ``sign.oidc_issuer``).
    """
    missing = [k for k, v in (("identity", identity), ("oidc_issuer", oidc_issuer)) if not v]
    if missing:
        raise ConfigError(
            f"params.yaml: sign.method is sigstore but sign.{' and sign.'.join(missing)} "
            "is not set (verification needs the signer's identity and OIDC issuer)"
        )
    return str(identity), str(oidc_issuer)
