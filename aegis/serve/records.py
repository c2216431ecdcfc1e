"""What the gateway signs (with its ``serving`` key) and how the pipeline audits it.

The gateway holds no pipeline or operator key, so it cannot append to the audit log.
It writes signed records into ``.aegis/serve/`` instead: alerts (a new prod refused,
a reload that failed) in ``alerts.jsonl`` and one line per prediction-log segment
(file, SHA-256, rows, times) in ``log/segments.jsonl``. ``aegis audit import-serving``
(:func:`import_records`, run by the pipeline's holder) verifies each line against a
``serving`` key of the trust store and appends those not yet imported to the audit
log as one ``serve.records`` entry, so the evidence stands on the audit chain.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis.crypto.documents import body_digest, sign_document, verify_document
from aegis.crypto.keys import PrivateKey, load_private_key
from aegis.errors import RefusedError, UnsafeFileError
from aegis.fileutil import read_optional
from aegis.ledger import Action, Ledger
from aegis.timeutil import utc_now
from aegis.workspace import Workspace

ALERT_KIND = "aegis-serve-alert/1"
SEGMENT_KIND = "aegis-serve-segment/1"
ALERTS_CAP = 4 * 1024 * 1024  # then alerts.jsonl becomes alerts.jsonl.1 (the older one goes)
READ_CAP = 64 * 1024 * 1024

log = logging.getLogger("aegis.serve")


def serve_dir(ws: Workspace) -> Path:
    """The one directory the gateway writes to."""
    return ws.aegis_dir / "serve"


def alerts_path(ws: Workspace) -> Path:
    return serve_dir(ws) / "alerts.jsonl"


def segments_index(ws: Workspace) -> Path:
    return serve_dir(ws) / "log" / "segments.jsonl"


def feedback_path(ws: Workspace) -> Path:
    return serve_dir(ws) / "log" / "feedback.jsonl"


def load_serving_key(ledger: Ledger, path: Path | None) -> PrivateKey:
    """The gateway's key: an active ``serving`` key of the trust store, nothing else.

    Raises:
        UsageError: No key given, or not a key file.
        RefusedError: ``signer``: another role (a pipeline, operator or approver key
            is refused: the gateway must not be able to sign what they sign), unknown,
            retired or revoked; ``key-permissions``.
    """
    from aegis.errors import UsageError

    if path is None:
        raise UsageError("the gateway signs its records with a serving key: --key (AEGIS_KEY)")
    key = load_private_key(path)
    ledger.trust.require_signer(key.key_id, role="serving", what=str(path), new=True)
    return key


class Recorder:
    """Appends signed lines to the gateway's record files (thread-safe)."""

    def __init__(self, ws: Workspace, key: PrivateKey) -> None:
        self.ws = ws
        self.key = key
        self._lock = threading.Lock()

    def _append(self, path: Path, document: dict[str, Any], *, cap: int | None) -> None:
        line = json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            if cap is not None and path.exists() and path.stat().st_size > cap:
                os.replace(path, path.with_name(path.name + ".1"))
            # O_NOFOLLOW: a planted symlink never redirects the gateway's writes
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "a") as fh:
                fh.write(line)

    def alert(self, check: str, message: str, **details: Any) -> None:
        """Logs and signs an alert (imported into the audit log later)."""
        log.warning("alert: %s: %s", check, message)
        body = {
            "kind": ALERT_KIND, "time": utc_now(), "check": check, "message": message,
            "pid": os.getpid(), **details,
        }  # fmt: skip
        try:
            self._append(alerts_path(self.ws), sign_document(self.key, body), cap=ALERTS_CAP)
        except OSError as exc:  # the alert is still in the process log and the metrics
            log.error("cannot write alert to %s: %s", alerts_path(self.ws), exc)

    def feedback(self, document: dict[str, Any]) -> None:
        """Appends one signed feedback line (:mod:`aegis.serve.feedback`)."""
        from aegis.serve.feedback import FEEDBACK_CAP

        self._append(feedback_path(self.ws), document, cap=FEEDBACK_CAP)

    def segment(self, body: dict[str, Any]) -> None:
        """Signs one written prediction-log segment into the segment index."""
        document = sign_document(self.key, {"kind": SEGMENT_KIND, **body})
        self._append(segments_index(self.ws), document, cap=None)


@dataclass(frozen=True)
class Imported:
    alerts: int
    segments: int
    refused: int  # lines that did not verify (reported, never imported)
    seq: int | None  # the audit entry, or None when nothing was new


def record_lines(path: Path) -> list[str]:
    try:
        raw = read_optional(path, limit=READ_CAP, what=path.name)
    except UnsafeFileError as exc:
        raise RefusedError("serve-records", f"{path.name}: {exc.detail}") from None
    return raw.decode("utf-8", "replace").splitlines() if raw else []


def verified_record(line: str, kind: str, ledger: Ledger) -> dict[str, Any] | None:
    try:
        document = json.loads(line)
        signed = verify_document(document, kind=kind, trust=ledger.trust)
    except (ValueError, RefusedError):
        return None
    if signed.signer.role != "serving" or signed.signer.status == "revoked":
        return None
    return document


def imported_digests(ledger: Ledger) -> set[str]:
    out: set[str] = set()
    for entry in ledger.log.by_action(Action.SERVE_RECORDS):
        out.update(entry.details.get("digests", []))
    return out


def import_records(ledger: Ledger, *, actor: str) -> Imported:
    """Audits the gateway's signed records not imported before (see the module docstring)."""
    ws = ledger.ws
    with ledger.locked():
        seen = imported_digests(ledger)
        new: dict[str, list[dict[str, Any]]] = {"alerts": [], "segments": []}
        digests: list[str] = []
        refused = 0
        sources = [
            ("alerts", ALERT_KIND, alerts_path(ws).with_name("alerts.jsonl.1")),
            ("alerts", ALERT_KIND, alerts_path(ws)),
            ("segments", SEGMENT_KIND, segments_index(ws)),
        ]
        for group, kind, path in sources:
            for line in record_lines(path):
                document = verified_record(line, kind, ledger)
                if document is None:
                    refused += 1
                    continue
                digest = body_digest(document["body"])
                if digest in seen:
                    continue
                seen.add(digest)
                digests.append(digest)
                new[group].append(document)
        if not digests:
            return Imported(0, 0, refused, None)
        entry = ledger.append(
            Action.SERVE_RECORDS,
            actor=actor,
            details={"digests": digests, "refused": refused, **new},
        )
    return Imported(len(new["alerts"]), len(new["segments"]), refused, entry.seq)
