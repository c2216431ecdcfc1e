"""Supplier reputation: the share of a supplier's rows the screens flagged, over time.

Counted from the audit log alone: every validated version (``validate.passed``,
its ``screen_flagged``) and every version the screens stopped
(``screen.refused``), once per dataset digest (a delivery sent again counts
once), since the supplier's last re-admission. Only verified deliveries reach
the screens, so a supplier's count is only ever its own signed data.

A supplier whose rate is above ``screen.max_supplier_flag_rate`` is refused at
ingest (``supplier-reputation``) until an admin re-admits it: a document signed
by the admin key, kept in the ``supplier.readmitted`` entry (audited, then
committed), which starts the count afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aegis.crypto.documents import sign_document
from aegis.errors import RefusedError, UsageError
from aegis.ledger import READMIT_KIND, Action, Ledger
from aegis.text import check_reason
from aegis.timeutil import utc_now


@dataclass(frozen=True)
class Reputation:
    """One supplier's record since its last re-admission."""

    supplier: str
    versions: int  # distinct dataset digests screened
    refused: int  # of which the screens stopped
    rows: int
    flagged: int
    rate: float
    max_rate: float
    readmitted_at: str | None

    @property
    def blocked(self) -> bool:
        return self.rate > self.max_rate


def _readmitted_seq(ledger: Ledger, supplier: str) -> tuple[int, str | None]:
    admissions = ledger.readmissions(supplier)
    if not admissions:
        return -1, None
    last = max(admissions, key=lambda s: s.entry.seq)
    return last.entry.seq, str(last.body.get("created"))


def _counted(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def reputation(ledger: Ledger, supplier: str) -> Reputation:
    """The record of ``supplier`` (a trust-store name) from the verified audit log."""
    since, readmitted = _readmitted_seq(ledger, supplier)
    per_digest: dict[str, tuple[int, int, bool]] = {}
    actions = (Action.VALIDATE_PASSED, Action.SCREEN_REFUSED)
    for entry in ledger.log.scan(actions, supplier):
        if entry.seq <= since or entry.details.get("supplier") != supplier:
            continue
        refused = entry.action == Action.SCREEN_REFUSED
        flagged = entry.details.get("flagged" if refused else "screen_flagged")
        per_digest[str(entry.subjects.get("dataset"))] = (
            _counted(entry.details.get("rows")), _counted(flagged), refused,
        )  # fmt: skip
    rows = sum(r for r, _, _ in per_digest.values())
    flagged = sum(f for _, f, _ in per_digest.values())
    return Reputation(
        supplier=supplier,
        versions=len(per_digest),
        refused=sum(1 for *_, r in per_digest.values() if r),
        rows=rows,
        flagged=flagged,
        rate=round(flagged / rows, 6) if rows else 0.0,
        max_rate=ledger.ws.params().screen.max_supplier_flag_rate,
        readmitted_at=readmitted,
    )


def supplier_reputations(ledger: Ledger) -> list[Reputation]:
    """The record of every supplier in the trust store, by name."""
    names = sorted(e.name for e in ledger.trust.entries if e.role == "supplier")
    return [reputation(ledger, name) for name in names]


def check_supplier(ledger: Ledger, supplier: str) -> None:
    """Refuses a supplier whose flagged share is over the limit.

    Raises:
        RefusedError: ``supplier-reputation``, naming the rate and how to re-admit.
    """
    record = reputation(ledger, supplier)
    if record.blocked:
        raise RefusedError(
            "supplier-reputation",
            f"supplier '{supplier}' had {record.flagged} of {record.rows} rows "
            f"({record.rate:.1%}) flagged by the screens over {record.versions} version(s), "
            f"over screen.max_supplier_flag_rate ({record.max_rate:.0%}); an admin re-admits "
            f"it with `aegis trust readmit {supplier} --reason ... --admin-key ...`",
        )


def readmit(ledger: Ledger, supplier: str, *, reason: str, admin_key: Path | None) -> Reputation:
    """Re-admits a supplier: signed by an admin, audited, committed; the count starts afresh.

    Raises:
        UsageError: No reason, not a supplier, or not blocked.
        RefusedError: ``signer`` / ``admin-key``: not an active admin key kept outside.
    """
    from aegis.trust_ops import admin_private_key

    if not check_reason(reason):
        raise UsageError("a re-admission needs --reason")
    admin = admin_private_key(ledger.ws, admin_key)
    with ledger.locked():
        entry = next((e for e in ledger.trust.entries if e.name == supplier), None)
        if entry is None or entry.role != "supplier":
            raise UsageError(f"'{supplier}' is not a supplier in the trust store")
        record = reputation(ledger, supplier)
        if not record.blocked:
            raise UsageError(
                f"supplier '{supplier}' is not blocked ({record.rate:.1%} flagged, limit "
                f"{record.max_rate:.0%})"
            )
        signer = ledger.trust.require_signer(
            admin.key_id, role="admin", what=str(admin_key), new=True
        )
        body = {
            "kind": READMIT_KIND,
            "supplier": supplier,
            "reason": reason,
            "before": {"rows": record.rows, "flagged": record.flagged, "rate": record.rate},
            "admin": {"key_id": signer.key_id, "owner": signer.owner},
            "created": utc_now(),
        }
        ledger.append(
            Action.SUPPLIER_READMITTED,
            actor=signer.key_id,
            subjects={"supplier": entry.key_id},
            details={"supplier": supplier, "reason": reason, "signed": sign_document(admin, body)},
        )
        from aegis import vcs

        vcs.commit_empty(
            ledger.ws.root, f"trust: re-admit supplier {supplier}: {reason}",
            trailer=ledger.trailer(),
        )  # fmt: skip
    return reputation(ledger, supplier)
