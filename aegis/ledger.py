"""The verified ledger: what is proven in a workspace, decided in one place.

In the spirit of python-tuf's trusted metadata set, a :class:`Ledger` is
built once per command from the audit log and the trust store, verified
once, and then answers typed queries: accepted datasets and their suppliers,
validations, quarantine releases, trainings, evaluations, releases,
promotion requests, approvals and rejections, registry changes and their
tags, retirements. Every consumer asks it; nothing else reads the audit log
except ``aegis audit``. A long-running process calls :meth:`Ledger.refresh`,
which verifies only what was appended since.

Verification at :meth:`Ledger.load`:

1. the trust store's signed chain, rooted at the anchor in ``workspace.json``;
2. the audit log against the pipeline key's signed head (one SHA-256 of the
   log's bytes; see :mod:`aegis.audit`), starting at ``workspace.init``;
3. that the trust store is the one the audit log last recorded (a restored
   older store would undo a revocation);
4. freshness: every audit entry that git records in a commit or tag message
   (``Aegis-Audit: <seq> <hash>``, written by every commit and tag Aegis
   makes) is in the log with that hash. An older copy of ``.aegis/audit/``
   (with or without an older trust store) is shorter than what git saw and
   is refused. A consistent rewind of git *and* ``.aegis/`` together cannot
   be seen from inside the workspace; the log's copy off the machine
   (``audit.ship_to``, :mod:`aegis.audit_ship`) can: every append ships its
   entry there, and refuses when that copy disagrees with the local log.

Signed documents kept in entries (requests, approvals, quarantine releases)
are verified against the trust store when they are asked for.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from aegis import vcs
from aegis.audit import AuditEntry, VerifiedLog
from aegis.audit_ship import Shipper
from aegis.config import AuditParams
from aegis.crypto.documents import SignedDocument, verify_document
from aegis.crypto.keys import PrivateKey, load_private_key
from aegis.crypto.truststore import TrustEntry, TrustStore
from aegis.errors import AuditError, FreshnessError, RefusedError, TrustStoreError
from aegis.workspace import Workspace


class Action:
    """Every audit action, in one place (the on-disk names never change)."""

    WORKSPACE_INIT = "workspace.init"
    AUDIT_ANCHORED = "audit.anchored"
    TRUST_ADD = "trust.add"
    TRUST_REVOKE = "trust.revoke"
    TRUST_RETIRE = "trust.retire"
    INGEST_ACCEPTED = "ingest.accepted"
    VALIDATE_PASSED = "validate.passed"
    QUARANTINE_RELEASE = "quarantine.release"
    SCREEN_REFUSED = "screen.refused"
    SUPPLIER_READMITTED = "supplier.readmitted"
    TRAIN_DONE = "train.done"
    EVALUATE_DONE = "evaluate.done"
    RELEASE_CREATED = "release.created"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_GRANTED = "approval.granted"
    APPROVAL_REJECTED = "approval.rejected"
    API_CLIENTS = "api.clients"
    SERVE_RECORDS = "serve.records"
    SEAL_RESEALED = "seal.resealed"
    MONITOR_BREACH = "monitor.breach"  # an incident opened by the production monitor
    MONITOR_THROTTLE = "monitor.throttle"  # the monitor lowered one client key's rate
    MONITOR_CONTAINED = "monitor.contained"  # an incident's containment ended

    TRUST_CHANGES = (WORKSPACE_INIT, TRUST_ADD, TRUST_REVOKE, TRUST_RETIRE)
    DECISIONS: ClassVar[dict[str, str]] = {
        "approve": APPROVAL_GRANTED,
        "reject": APPROVAL_REJECTED,
    }

    # journaled registry changes (release, promote, rollback) write <change>.intent,
    # then <change>.done or <change>.aborted

    @staticmethod
    def intent(change: str) -> str:
        return f"{change}.intent"

    @staticmethod
    def done(change: str) -> str:
        return f"{change}.done"

    @staticmethod
    def aborted(change: str) -> str:
        return f"{change}.aborted"


# Documents kept in audit entries (``details["signed"]``).
REQUEST_KIND = "aegis-promotion-request/1"
APPROVAL_KIND = "aegis-approval/1"
QUARANTINE_KIND = "aegis-quarantine-release/1"
READMIT_KIND = "aegis-supplier-readmit/1"

# How many full verifications this process made: the benchmark and the tests count them.
VERIFICATIONS = 0


@dataclass(frozen=True)
class AcceptedDataset:
    """A dataset version ingest accepted (``ingest.accepted``)."""

    name: str
    digest: str
    created: str
    supplier: str
    supplier_owner: str
    supplier_key_id: str
    dvc_md5: str | None
    commit: str | None
    rows: int | None
    seq: int

    @classmethod
    def of(cls, entry: AuditEntry) -> AcceptedDataset:
        d = entry.details
        return cls(
            name=str(d.get("name")),
            digest=str(entry.subjects.get("dataset")),
            created=str(d.get("created")),
            supplier=str(d.get("supplier")),
            supplier_owner=str(d.get("supplier_owner")),
            supplier_key_id=str(d.get("supplier_key_id")),
            dvc_md5=d.get("dvc_md5"),
            commit=d.get("commit"),
            rows=d.get("rows"),
            seq=entry.seq,
        )


@dataclass(frozen=True)
class ReleaseRecord:
    """A release the audit log recorded (``release.created``) and how its change ended."""

    model: str
    version: str
    model_digest: str | None
    evidence_digest: str | None
    dataset_digest: str | None
    directory: str | None
    commit: str | None
    time: str
    seq: int
    aborted: bool
    actor: str = ""
    trigger: dict[str, Any] | None = None  # what started the run that made it (if recorded)


@dataclass(frozen=True)
class SignedEntry:
    """An audit entry holding a signed document whose signature verified."""

    entry: AuditEntry
    document: SignedDocument

    @property
    def body(self) -> dict[str, Any]:
        return self.document.body

    @property
    def signer(self) -> TrustEntry:
        return self.document.signer


class Ledger:
    """The verified audit log and trust store of one workspace (see the module docstring)."""

    def __init__(self, ws: Workspace, trust: TrustStore, log: VerifiedLog) -> None:
        self.ws = ws
        self.trust = trust
        self.log = log
        self._pipeline_key: PrivateKey | None = None
        self._ship: Shipper | None = None
        self._audit_params: tuple[tuple[int, ...] | None, AuditParams | None] = (None, None)
        # derived from an append-only log: each is extended with what was appended since
        self._closed: set[int] = set()
        self._closed_upto = 0
        self._tags: dict[str, tuple[int, dict[str, str]]] = {}

    # -- building and staying current ------------------------------------------------------

    @classmethod
    def load(cls, ws: Workspace) -> Ledger:
        """Verifies the trust store and the audit log once (see the module docstring).

        Raises:
            TrustStoreError: ``trust-store``: the store does not verify, lacks the
                pipeline key, or differs from its last audited state.
            AuditError: ``audit``: the log does not verify.
            FreshnessError: ``freshness``: git recorded entries the log lacks.
        """
        global VERIFICATIONS
        meta = ws.meta()
        trust = _load_trust(ws, meta["trust_anchor"])
        pipeline = trust.by_key_id(meta["pipeline_key"])
        if pipeline is None or pipeline.role != "pipeline":
            raise TrustStoreError("the pipeline key is not in the trust store")
        log = VerifiedLog.open(ws.audit(), pipeline_public_key=pipeline.public_key)
        VERIFICATIONS += 1
        ledger = cls(ws, trust, log)
        if not len(log) or log.entry(0).action != Action.WORKSPACE_INIT:
            raise AuditError("entry 0: the log does not start at workspace.init")
        anchored = ledger._check_fresh()  # first: an older log explains a trust mismatch too
        ledger.check_trust()
        if not anchored and ws.pipeline_key_path.exists():
            with contextlib.suppress(OSError):  # a read-only copy is verified, not anchored
                ledger._anchor_first_use()
        return ledger

    def refresh(self) -> int:
        """Takes in entries appended since (verifying only those) and the current trust store.

        Returns:
            How many entries were new.

        Raises:
            AuditError, TrustStoreError: As :meth:`load`.
        """
        added = self.log.refresh()
        trust = _load_trust(self.ws, self.ws.meta()["trust_anchor"])
        if trust.head != self.trust.head:
            self.trust = trust
        self.check_trust()
        return added

    def check_trust(self) -> None:
        """Refuses a trust store other than the one the audit log recorded, and a re-rooting.

        The store must be the one the log last recorded, and an extension of
        every state the log recorded before (so it descends from the store the
        workspace began with); the pipeline key must be the one that began the
        log. A store rebuilt from another admin, with ``workspace.json``
        rewritten to name it and a new pipeline key, fails both.

        Raises:
            TrustStoreError: Rolled back, changed without an audit entry, or re-rooted.
        """
        recorded = [
            e.subjects["trust"].removeprefix("sha256:")
            for e in self.log.by_action(*Action.TRUST_CHANGES)
            if "trust" in e.subjects
        ]
        if recorded and recorded[-1] != self.trust.head:
            raise TrustStoreError(
                "the trust store differs from its last audited state (rolled back to an older "
                "copy?)"
            )
        if not set(recorded) <= self.trust.record_hashes():
            raise TrustStoreError(
                "the trust store does not descend from the one the audit log recorded "
                "(rebuilt from another root?)"
            )
        if self.log.entry(0).actor != self.ws.meta()["pipeline_key"]:
            raise TrustStoreError(
                "workspace.json names another pipeline key than the one that began the audit "
                "log (re-rooted?)"
            )

    def _check_fresh(self) -> bool:
        """Refuses a log shorter than (or other than) what git recorded; whether git did."""
        anchors = vcs.audit_anchors(self.ws.root)
        for anchor in sorted(anchors, key=lambda a: -a.seq):
            if anchor.seq >= len(self.log):
                raise FreshnessError(
                    f"the audit log ends at entry {len(self.log) - 1}, but {anchor.where} "
                    f"records entry {anchor.seq}: an older copy of .aegis/audit was restored "
                    "(or entries removed)"
                )
            if self.log.entry(anchor.seq).hash != anchor.hash:
                raise FreshnessError(
                    f"entry {anchor.seq} is not the one {anchor.where} records: the audit log "
                    "was replaced"
                )
        return bool(anchors)

    def _anchor_first_use(self) -> None:
        """A workspace from before anchors: anchor the log now (audited, one empty commit)."""
        if not vcs.head_commit(self.ws.root):
            return  # `aegis init` commits the anchor itself
        with self.ws.lock():
            self.refresh()
            entry = self.append(
                Action.AUDIT_ANCHORED,
                actor=self.pipeline_key().key_id,
                details={"entries": len(self.log)},
            )
            vcs.commit_empty(
                self.ws.root,
                f"aegis: anchor the audit log at entry {entry.seq} (rollback detection)",
                trailer=self.trailer(),
            )

    # -- writing --------------------------------------------------------------------------

    def pipeline_key(self) -> PrivateKey:
        """The workspace's pipeline key (it signs the audit head and releases)."""
        if self._pipeline_key is None:
            key = load_private_key(self.ws.pipeline_key_path)
            if key.key_id != self.ws.meta()["pipeline_key"]:
                raise RefusedError("signer", "the pipeline key on disk is not this workspace's")
            self._pipeline_key = key
        return self._pipeline_key

    def append(
        self,
        action: str,
        *,
        actor: str,
        subjects: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Appends one entry (refreshing first, so it chains onto the verified tail).

        Every entry is appended here. With ``audit.ship_to`` set it is also
        shipped off the machine (:mod:`aegis.audit_ship`), under the log's lock:
        before the local write the remote must hold the whole local log (what
        it lacks is shipped first), then the new entry is shipped.

        Raises:
            AuditError: The log on disk is not the verified one.
            RefusedError: ``audit-ship``: the entry could not be shipped (before
                the local write: nothing was appended; after it: the entry stays
                in the local log, unshipped, and the next append ships it);
                ``audit-remote``: the shipped copy holds entries the local log
                lacks or holds with other bytes (nothing was appended).
            ConfigError: ``params.yaml`` is invalid (whether to ship is unknown).
        """
        shipper = self._shipper()
        if shipper is None:
            return self.log.append(
                actor=actor,
                action=action,
                pipeline_key=self.pipeline_key(),
                subjects=subjects,
                details=details,
            )
        key = self.pipeline_key()
        with self.log.log.lock():
            self.log.refresh()
            shipper.prepare(log=self.log)
            entry = self.log.append(
                actor=actor, action=action, pipeline_key=key, subjects=subjects, details=details
            )
            shipper.ship(log=self.log, seq=entry.seq)
        return entry

    def _shipper(self) -> Shipper | None:
        """The shipper of ``audit.ship_to`` as ``params.yaml`` says now (None: not shipped).

        ``params.yaml`` is parsed again only when its size, time or inode changed.
        """
        try:
            info = self.ws.params_path.stat()
            stamp: tuple[int, ...] | None = (info.st_ino, info.st_size, info.st_mtime_ns)
        except OSError:
            stamp = None  # parsing names the problem
        if stamp is None or stamp != self._audit_params[0]:
            self._audit_params = (stamp, self.ws.params().audit)
        audit = self._audit_params[1]
        if audit is None or audit.ship_to is None:
            return None
        shipper = self._ship
        if shipper is None or (shipper.url, shipper.retention_days) != (
            audit.ship_to,
            audit.retention_days,
        ):
            shipper = self._ship = Shipper(url=audit.ship_to, retention_days=audit.retention_days)
        return shipper

    def trailer(self) -> str:
        """The anchor line for a commit or tag made now: the last entry's seq and hash."""
        return vcs.anchor_line(len(self.log) - 1, self.log.head_hash)

    def commit(self, message: str, paths: list[str]) -> str:
        """Commits ``paths`` with the audit anchor (every Aegis commit goes through here)."""
        return vcs.commit_paths(self.ws.root, message, paths, trailer=self.trailer())

    @contextlib.contextmanager
    def locked(self) -> Iterator[Ledger]:
        """The workspace lock, with the ledger refreshed inside it (decide, then write).

        With ``audit.ship_to`` set, the shipped copy is checked (and caught up)
        here too, so a remote that cannot be written refuses the operation
        before it changes anything (a trust store, a tag, a dataset), not only
        at its audit entry.

        Raises:
            RefusedError: ``audit-ship``, ``audit-remote``: as :meth:`append`.
        """
        with self.ws.lock():
            self.refresh()
            shipper = self._shipper()
            if shipper is not None:
                with self.log.log.lock():
                    self.log.refresh()
                    shipper.prepare(log=self.log)
            yield self

    # -- who acts ---------------------------------------------------------------------------

    def pipeline_entry(self) -> TrustEntry:
        entry = self.trust.by_key_id(self.ws.meta()["pipeline_key"])
        if entry is None:
            raise TrustStoreError("the pipeline key is not in the trust store")
        return entry

    def actor(self, key_path: Path | None, *, role: str = "operator") -> tuple[str, TrustEntry]:
        """Who is acting: the holder of ``key_path`` (an active ``role`` key), or the pipeline.

        Raises:
            RefusedError: ``signer``: not a current key of that role.
        """
        return actor_in(self.ws, self.trust, key_path, role=role)

    # -- datasets, validation, quarantine ---------------------------------------------------

    def _find(self, action: str, *needles: str, match) -> AuditEntry | None:
        """The last entry of ``action`` holding ``needles`` for which ``match(entry)``."""
        return next((e for e in self.log.scan((action,), *needles, reverse=True) if match(e)), None)

    def accepted(self, digest: str) -> AcceptedDataset | None:
        """The latest acceptance of dataset ``digest`` by ingest, if any."""
        entry = self._find(
            Action.INGEST_ACCEPTED, digest, match=lambda e: e.subjects.get("dataset") == digest
        )
        return None if entry is None else AcceptedDataset.of(entry)

    def last_accepted(self, name: str) -> AcceptedDataset | None:
        """The last accepted version of dataset ``name``, if any."""
        entry = self._find(
            Action.INGEST_ACCEPTED, name, match=lambda e: e.details.get("name") == name
        )
        return None if entry is None else AcceptedDataset.of(entry)

    def validated(self, name: str, dataset: str, result_digest: str) -> AuditEntry | None:
        """The ``validate.passed`` entry of this exact result of ``dataset``, if any."""
        for entry in self.log.scan((Action.VALIDATE_PASSED,), result_digest, reverse=True):
            if (
                entry.details.get("name") == name
                and entry.subjects.get("dataset") == dataset
                and entry.subjects.get("validation") == result_digest
            ):
                return entry
        return None

    def last_validation(self, name: str, *, exclude: str | None = None) -> AuditEntry | None:
        """The last passed validation of ``name`` of another version than ``exclude``."""
        return self._find(
            Action.VALIDATE_PASSED, name,
            match=lambda e: e.details.get("name") == name and e.subjects.get("dataset") != exclude,
        )  # fmt: skip

    def quarantine_releases(self, name: str, dataset: str) -> list[SignedEntry]:
        """Releases of quarantined rows of this exact version, each signed by an operator.

        A release counts only if its entry holds the operator's signed document,
        bound to ``name`` and ``dataset``, by a key that is an operator in the
        trust store and not revoked. Anything else counts for nothing.
        """
        found = []
        for entry in self.log.scan((Action.QUARANTINE_RELEASE,), dataset):
            if entry.subjects.get("dataset") != dataset:
                continue
            signed = self._signed(entry, QUARANTINE_KIND)
            if signed is None or signed.signer.role != "operator":
                continue
            body = signed.body
            if (body.get("name"), body.get("dataset")) != (name, dataset):
                continue
            if signed.signer.status == "revoked" or signed.signer.key_id != entry.actor:
                continue
            found.append(signed)
        return found

    def readmissions(self, supplier: str) -> list[SignedEntry]:
        """Re-admissions of a supplier after its reputation blocked it, each signed by an admin."""
        found = []
        for entry in self.log.scan((Action.SUPPLIER_READMITTED,), supplier):
            signed = self._signed(entry, READMIT_KIND)
            if signed is None or signed.signer.role != "admin" or signed.signer.status == "revoked":
                continue
            if signed.body.get("supplier") == supplier and signed.signer.key_id == entry.actor:
                found.append(signed)
        return found

    # -- models and releases -----------------------------------------------------------------

    def trained(self, model_digest: str) -> AuditEntry | None:
        return self._find(
            Action.TRAIN_DONE, model_digest,
            match=lambda e: e.subjects.get("model") == model_digest,
        )  # fmt: skip

    def evaluated(self, model_digest: str, metrics_digest: str) -> AuditEntry | None:
        return self._find(
            Action.EVALUATE_DONE, metrics_digest,
            match=lambda e: (e.subjects.get("model"), e.subjects.get("metrics"))
            == (model_digest, metrics_digest),
        )  # fmt: skip

    def releases(self) -> dict[tuple[str, str], ReleaseRecord]:
        """Every recorded release by (model, version); the latest record wins."""
        aborted = {e.details.get("intent") for e in self.log.by_action(Action.aborted("release"))}
        out: dict[tuple[str, str], ReleaseRecord] = {}
        for entry in self.log.by_action(Action.RELEASE_CREATED):
            d = entry.details
            key = (str(d.get("model_name")), str(d.get("version")))
            out[key] = ReleaseRecord(
                model=key[0],
                version=key[1],
                model_digest=entry.subjects.get("model"),
                evidence_digest=entry.subjects.get("evidence"),
                dataset_digest=entry.subjects.get("dataset"),
                directory=d.get("directory"),
                commit=d.get("commit"),
                time=entry.time,
                seq=entry.seq,
                aborted=d.get("intent") is not None and d.get("intent") in aborted,
                actor=entry.actor,
                trigger=d["trigger"] if isinstance(d.get("trigger"), dict) else None,
            )
        return out

    def release(self, model: str, version: str) -> ReleaseRecord | None:
        return self.releases().get((model, version))

    def holds(self, seq: int, entry_hash: str) -> bool:
        """Whether entry ``seq`` of the log has hash ``entry_hash``."""
        return 0 <= seq < len(self.log) and self.log.entry(seq).hash == entry_hash

    def find_hash(self, entry_hash: str) -> int | None:
        """The sequence number of the entry with ``entry_hash`` (a scan: old releases only)."""
        return next((e.seq for e in self.log if e.hash == entry_hash), None)

    # -- promotion ------------------------------------------------------------------------

    def requests(self, model: str, version: str) -> list[SignedEntry | AuditEntry]:
        """Every recorded promotion request of ``model@version``, oldest first.

        A request whose document verifies is a :class:`SignedEntry`; one from
        before requests were kept in the log (or one that does not verify) is the
        bare :class:`AuditEntry`, which callers treat as expired.
        """
        out: list[SignedEntry | AuditEntry] = []
        for entry in self.log.scan((Action.APPROVAL_REQUESTED,), model, version):
            d = entry.details
            if (d.get("model_name"), d.get("version")) != (model, version):
                continue
            out.append(self._signed(entry, REQUEST_KIND) or entry)
        return out

    def decisions(self, request_digest: str) -> list[SignedEntry]:
        """Approvals and rejections of a request whose signed documents verify, in order.

        Whether each counts (role, owner, time window, key status) is the
        approval policy's decision (:mod:`aegis.registry.approvals_review`).
        """
        found = []
        for entry in self.log.scan(Action.DECISIONS.values(), request_digest):
            if entry.subjects.get("request") != request_digest:
                continue
            signed = self._signed(entry, APPROVAL_KIND)
            if signed is not None and signed.signer.key_id == entry.actor:
                found.append(signed)
        return found

    def decided(self, key_id: str, request_digest: str) -> bool:
        """Whether ``key_id`` recorded any decision on the request (signed or not)."""
        return any(
            e.actor == key_id and e.subjects.get("request") == request_digest
            for e in self.log.scan(Action.DECISIONS.values(), key_id, request_digest)
        )

    def retired_at(self, key_id: str) -> int | None:
        """The sequence number of the audited retirement of ``key_id``, if any."""
        for entry in self.log.scan((Action.TRUST_RETIRE,), key_id):
            if entry.details.get("key_id") == key_id:
                return entry.seq
        return None

    # -- registry changes (the journal) ---------------------------------------------------

    def _change_actions(self, suffix: str) -> tuple[str, ...]:
        return tuple(a for a in self.log.actions() if a.endswith(f".{suffix}"))

    def change_entries(self, suffix: str) -> list[AuditEntry]:
        """Entries of every journaled change (``<change>.<suffix>``), in log order."""
        return self.log.by_action(*self._change_actions(suffix))

    def closed_intents(self) -> set[int]:
        """Sequence numbers of the intents a done or aborted entry closed.

        Read from the bytes (``"intent": N`` as the pipeline writes it), so a long
        log of closed changes is not parsed entry by entry.
        """
        actions = self._change_actions("done") + self._change_actions("aborted")
        for seq in self.log.seqs_since(actions, self._closed_upto):
            match = _INTENT.search(self.log.raw(seq))
            if match:
                self._closed.add(int(match[1]))
        self._closed_upto = len(self.log)
        return set(self._closed)

    def open_intents(self) -> list[AuditEntry]:
        """Intent entries with neither a done nor an aborted entry."""
        intents = self.log.seqs_since(self._change_actions("intent"), 0)
        if not intents:
            return []
        closed = self.closed_intents()
        return [self.log.entry(s) for s in intents if s not in closed]

    def bound_commits(self, intent: AuditEntry) -> dict[str, str]:
        """The commit each planned tag of ``intent`` must point to, as the log recorded it.

        The intent records the commits it knew when planned; an entry of the same
        change written later (``release.created`` names the release commit) adds
        the rest.
        """
        bound = dict(intent.details.get("tag_commits") or {})
        for entry in self.log.by_action(Action.RELEASE_CREATED):
            if entry.details.get("intent") == intent.seq:
                bound.update(entry.details.get("tag_commits") or {})
        return bound

    def audited_tags(self, model: str) -> tuple[dict[str, str], set[str]]:
        """The model's tags per the log: ``{tag: commit}`` of completed changes, and in flight.

        In-flight tags are those planned by changes still open (being made now,
        or to be reconciled).
        """
        upto, known = self._tags.get(model, (0, {}))
        expected = dict(known)
        for entry in self._tagged(self._change_actions("done"), model, upto):
            for tag, commit in (entry.details.get("tag_commits") or {}).items():
                if _belongs(tag, model):
                    expected[tag] = commit
        self._tags[model] = (len(self.log), dict(expected))
        in_flight: set[str] = set()
        for entry in self.open_intents():
            in_flight.update(t for t in entry.details.get("tags", []) if _belongs(t, model))
        return expected, in_flight

    def _tagged(self, actions: tuple[str, ...], model: str, start: int) -> Iterator[AuditEntry]:
        """Entries of ``actions`` from ``start`` on naming a tag of ``model`` (``"<model>@/#``)."""
        needles = (f'"{model}@'.encode(), f'"{model}#'.encode())
        for seq in self.log.seqs_since(actions, start):
            line = self.log.raw(seq)
            if needles[0] in line or needles[1] in line:
                yield self.log.entry(seq)

    # -- signed documents --------------------------------------------------------------------

    def _signed(self, entry: AuditEntry, kind: str) -> SignedEntry | None:
        document = entry.details.get("signed")
        if document is None:
            return None
        try:
            return SignedEntry(entry, verify_document(document, kind=kind, trust=self.trust))
        except RefusedError:
            return None


def actor_in(
    ws: Workspace, trust: TrustStore, key_path: Path | None, *, role: str = "operator"
) -> tuple[str, TrustEntry]:
    """Who acts per ``trust``: the holder of ``key_path`` (an active ``role`` key), or the pipeline.

    Raises:
        RefusedError: ``signer``: not a current key of that role.
        TrustStoreError: The pipeline key is not in the trust store.
    """
    if key_path is None:
        entry = trust.by_key_id(ws.meta()["pipeline_key"])
        if entry is None:
            raise TrustStoreError("the pipeline key is not in the trust store")
        return entry.key_id, entry
    key = load_private_key(key_path)
    entry = trust.require_signer(key.key_id, role=role, what=str(key_path), new=True)
    return entry.key_id, entry


def load_trust(ws: Workspace) -> TrustStore:
    """The workspace's trust store, its signed chain verified (not against the audit log)."""
    return _load_trust(ws, ws.meta()["trust_anchor"])


_INTENT = re.compile(rb'"intent": ([0-9]+)[,}]')


def _belongs(tag: str, model: str) -> bool:
    return tag.startswith((f"{model}@", f"{model}#"))


def _load_trust(ws: Workspace, anchor: str) -> TrustStore:
    try:
        return TrustStore.load(ws.trust_path, anchor=anchor)
    except TrustStoreError:
        raise
    except RefusedError as exc:
        raise TrustStoreError(exc.detail, exc.check) from None
