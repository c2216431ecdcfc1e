"""Arrivals: which signed deliveries in the watched sources are new, complete and not yet taken.

A source (``triggers.sources``) is a directory or an ``s3://bucket/prefix``.
It holds deliveries: the source itself when ``dataset.sig`` lies directly in
it, otherwise each immediate child (a folder, or a ``child/`` key prefix)
holding a ``dataset.sig``. A delivery is *ready* only when its signature
exists and two consecutive polls saw exactly the same files (names, sizes,
and modification times or ETags), so a half-copied delivery is never
reported. Its identity is the digest of its manifest (what ingest accepts);
the manifest is read here only to name the event: nothing is trusted before
the retrain run verifies the delivery in full.

:class:`Watch` keeps the previous poll's fingerprints and what it emitted in
``.aegis/watch.json`` (a cache, not evidence: losing it costs one extra poll
and at worst a duplicate event, which the run turns into an "already current"
no-op). An emitted digest that was never accepted is emitted again only when
the server knows no run for it, after a grace period: an event the server
lost (a restart) is recovered, a slow run is not doubled. Nor is a delivery
reported that the server already has a run for (a lost state file).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aegis.config import TriggersParams
from aegis.data.manifest import BUNDLE_NAME, MANIFEST_NAME, DatasetManifest, dataset_digest
from aegis.data.sources import parse_s3_url, s3_client, s3_errors
from aegis.errors import ConfigError, RefusedError, TransientIOError, UnsafeFileError, UsageError
from aegis.fileutil import atomic_write, read_optional, read_regular
from aegis.timeutil import utc_now

EVENT = "aegis.dataset.arrived"
MANIFEST_LIMIT = 16 * 1024 * 1024  # far above a real manifest; a larger one is not read
STATE_FORMAT = "aegis-watch/1"
STATE_LIMIT = 8 * 1024 * 1024
LISTING_LIMIT = 100_000  # objects one S3 source may list: a larger one is not a drop folder
_REMEMBER = 10_000  # emitted digests kept in the state file (oldest forgotten first)


@dataclass(frozen=True)
class Delivery:
    """A delivery seen in a source (its manifest not yet verified: a claim)."""

    source: str  # the configured source it was found in
    location: str  # the delivery itself: a directory or an s3:// prefix
    fingerprint: str  # sha256 of its listing (names, sizes, mtimes / ETags)
    name: str | None = None
    digest: str | None = None
    supplier_key_id: str | None = None
    created: str | None = None
    problem: str | None = None  # why it cannot be reported (unreadable manifest, ...)

    def payload(self) -> dict[str, str]:
        """The event payload: dataset name, manifest digest, supplier key id, location."""
        return {
            "name": str(self.name), "digest": str(self.digest),
            "supplier_key_id": str(self.supplier_key_id), "location": self.location,
            "created": str(self.created),
        }  # fmt: skip


def _fingerprint(entries: list[tuple[str, int, str]]) -> str:
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def _claim(source: str, location: str, entries, manifest: bytes | None) -> Delivery:
    """A delivery from its listing and manifest bytes (None: missing or unreadable)."""
    base = Delivery(source=source, location=location, fingerprint=_fingerprint(entries))
    if manifest is None:
        return Delivery(**{**asdict(base), "problem": f"no readable {MANIFEST_NAME}"})
    try:
        parsed = DatasetManifest.model_validate_json(manifest)
    except ValueError:
        return Delivery(**{**asdict(base), "problem": f"{MANIFEST_NAME} is not a valid manifest"})
    return Delivery(
        source=source, location=location, fingerprint=base.fingerprint, name=parsed.name,
        digest=dataset_digest(manifest), supplier_key_id=parsed.supplier_key_id,
        created=parsed.created,
    )  # fmt: skip


# -- directories -----------------------------------------------------------------------


def _dir_entries(directory: Path) -> list[tuple[str, int, str]]:
    entries = []
    with os.scandir(directory) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            kind = "f" if stat.S_ISREG(st.st_mode) else "x"  # a link or FIFO: ingest refuses it
            entries.append((entry.name, st.st_size, f"{kind}{st.st_mtime_ns}"))
    return entries


def _dir_delivery(source: str, directory: Path) -> Delivery:
    try:
        manifest = read_regular(directory / MANIFEST_NAME, limit=MANIFEST_LIMIT)
    except (OSError, UnsafeFileError):
        manifest = None
    return _claim(source, str(directory), _dir_entries(directory), manifest)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _has_signature(directory: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(directory / BUNDLE_NAME).st_mode)
    except OSError:
        return False


def _list_directory(source: str) -> Iterator[Delivery]:
    root = Path(source)
    if not _is_real_dir(root):
        raise ConfigError(f"triggers.sources: {source} is not a directory (a symlink is refused)")
    if _has_signature(root):
        yield _dir_delivery(source, root)
        return
    for child in sorted(root.iterdir()):
        if _is_real_dir(child) and _has_signature(child):
            yield _dir_delivery(source, child)


# -- S3 --------------------------------------------------------------------------------


def _list_s3(source: str, retries: int) -> list[Delivery]:
    bucket, prefix = parse_s3_url(source)
    client = s3_client(retries)
    groups: dict[str, list[tuple[str, int, str]]] = {}
    found = []
    with s3_errors(source, doing="listing"):
        listed = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            listed += len(page.get("Contents", []))
            if listed > LISTING_LIMIT:
                raise ConfigError(f"{source}: more than {LISTING_LIMIT} objects; watch a prefix "
                                  "that holds deliveries only")  # fmt: skip
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                group, _, name = rel.rpartition("/")
                if "/" in group or not name:
                    continue  # deeper than one level, or a folder marker: not a delivery
                groups.setdefault(group, []).append((name, int(obj["Size"]), obj["ETag"]))
        for group, entries in sorted(groups.items()):
            if BUNDLE_NAME not in {e[0] for e in entries}:
                continue
            where = prefix + (group + "/" if group else "")
            manifest = None
            if any(e[0] == MANIFEST_NAME and e[1] <= MANIFEST_LIMIT for e in entries):
                body = client.get_object(Bucket=bucket, Key=where + MANIFEST_NAME)["Body"]
                try:
                    manifest = body.read(MANIFEST_LIMIT + 1)
                finally:
                    body.close()
            found.append(_claim(source, f"s3://{bucket}/{where}", entries, manifest))
    return found


def list_deliveries(source: str, *, retries: int = 1) -> list[Delivery]:
    """Every delivery with a ``dataset.sig`` in ``source`` (ready or not).

    Raises:
        ConfigError: A directory source is missing or not a directory.
        UsageError: The bucket is missing or the credentials are refused.
        TransientIOError: S3 could not be listed (the next poll tries again).
    """
    if source.startswith("s3://"):
        return _list_s3(source, retries)
    return list(_list_directory(source))


def check_source(location: str, sources: list[str]) -> str:
    """The configured source that ``location`` lies in (itself or a direct child).

    Raises:
        RefusedError: ``trigger``: the location is in none of ``triggers.sources``.
    """
    if any(part in (".", "..") for part in location.split("/")[3 if "://" in location else 0 :]):
        raise RefusedError("trigger", f"{location}: '.' and '..' are not delivery names")
    for source in sources:
        if location.startswith("s3://") != source.startswith("s3://"):
            continue
        if location.startswith("s3://"):
            base = source.rstrip("/") + "/"
            rest = location.rstrip("/") + "/"
            if rest == base or (rest.startswith(base) and rest[len(base) :].count("/") == 1):
                return source
        else:
            loc, src = Path(location).resolve(), Path(source).resolve()
            if loc == src or loc.parent == src:
                return source
    raise RefusedError(
        "trigger", f"{location} is not in triggers.sources (a triggered run reads only those)"
    )


# -- the watch's memory ----------------------------------------------------------------


@dataclass
class WatchState:
    """What the previous poll saw and what was emitted (``.aegis/watch.json``)."""

    seen: dict[str, str] = field(default_factory=dict)  # location -> fingerprint
    emitted: dict[str, dict[str, Any]] = field(default_factory=dict)  # digest -> {at, event}

    @classmethod
    def load(cls, path: Path) -> WatchState:
        """The saved state; an empty one if missing or unreadable (it is only a cache)."""
        try:
            raw = read_optional(path, limit=STATE_LIMIT)
            data = json.loads(raw) if raw else {}
        except (OSError, UnsafeFileError, ValueError, RecursionError):
            data = {}
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            return cls()
        seen, emitted = data.get("seen"), data.get("emitted")
        return cls(
            seen={k: v for k, v in (seen or {}).items() if isinstance(v, str)}
            if isinstance(seen, dict) else {},
            emitted={k: v for k, v in (emitted or {}).items() if isinstance(v, dict)}
            if isinstance(emitted, dict) else {},
        )  # fmt: skip

    def save(self, path: Path) -> None:
        """Writes the state atomically, forgetting the oldest emissions beyond a bound."""
        kept = sorted(self.emitted.items(), key=lambda kv: str(kv[1].get("at")))[-_REMEMBER:]
        data = {"format": STATE_FORMAT, "seen": self.seen, "emitted": dict(kept)}
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())


@dataclass(frozen=True)
class PollResult:
    """One poll: deliveries to report now, and what was skipped and why."""

    ready: list[Delivery]
    waiting: list[Delivery]  # seen for the first time or still changing
    skipped: list[tuple[Delivery, str]]
    errors: list[str]  # sources that could not be listed


class Watch:
    """Polls the configured sources and decides what to emit; one per watch run."""

    def __init__(self, state_path: Path, params: TriggersParams, *, retries: int = 1) -> None:
        self.state_path = state_path
        self.params = params
        self.retries = retries
        self.state = WatchState.load(state_path)

    def poll(
        self,
        *,
        accepted: Callable[[str], bool],
        known_run: Callable[[str], bool],
        allowed_names: set[str],
        now: float,
    ) -> PollResult:
        """Lists every source once and returns the deliveries to report.

        Args:
            accepted: Whether a digest was already accepted (never re-emitted).
            known_run: Whether the server knows a retrain run for a digest.
            allowed_names: Dataset names the pipeline runs (``pipeline.datasets``).
            now: The current time (seconds since the epoch).
        """
        ready, waiting, skipped, errors = [], [], [], []
        seen: dict[str, str] = {}
        for source in self.params.sources:
            try:
                found = list_deliveries(source, retries=self.retries)
            except (TransientIOError, ConfigError, UsageError, OSError) as exc:
                errors.append(f"{source}: {exc}")
                seen.update({k: v for k, v in self.state.seen.items() if k.startswith(source)})
                continue
            for delivery in found:
                seen[delivery.location] = delivery.fingerprint
                if self.state.seen.get(delivery.location) != delivery.fingerprint:
                    waiting.append(delivery)
                elif delivery.problem is not None:
                    skipped.append((delivery, delivery.problem))
                elif delivery.name not in allowed_names:
                    skipped.append((delivery, f"'{delivery.name}' is not in pipeline.datasets"))
                elif accepted(str(delivery.digest)):
                    continue  # already taken: accepted digests are never emitted again
                elif self._due(delivery, known_run, now):
                    ready.append(delivery)
        self.state.seen = seen
        return PollResult(ready, waiting, skipped, errors)

    def _due(self, delivery: Delivery, known_run: Callable[[str], bool], now: float) -> bool:
        """No run known for it, and not emitted, or emitted long enough ago (a lost event).

        A delivery the server already has a run for is not reported even when
        this watch never emitted it (a lost state file, another watcher).
        """
        previous = self.state.emitted.get(str(delivery.digest))
        if previous is None:
            return not known_run(str(delivery.digest))
        grace = self.params.within + 2 * self.params.poll_interval + 30
        at = previous.get("epoch")
        if not isinstance(at, int | float) or now - at < grace:
            return False
        return not known_run(str(delivery.digest))

    def mark_emitted(self, delivery: Delivery, event_id: str, *, now: float) -> None:
        """Records an emission (only after the server acknowledged the event)."""
        self.state.emitted[str(delivery.digest)] = {
            "at": utc_now(), "epoch": now, "event": event_id, "location": delivery.location,
        }  # fmt: skip

    def save(self) -> None:
        """Persists the state for the next poll (and the next watch run)."""
        self.state.save(self.state_path)
