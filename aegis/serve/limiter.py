"""Per-client rate limits and quotas, counted in rows, that hold across workers.

Both limits are fixed windows (``floor(now / period)``): a request of ``rows`` rows is
admitted only if it fits in *both* the rate window and the quota window, and then
counted in both, in one atomic step, so no admitted request ever takes a client past a
limit, whatever the concurrency. A refused request counts nothing.

- :class:`MemoryLimiter`: one process (``--workers 1``), under a lock; quota windows are
  kept in ``.aegis/serve/counters.json`` so a restart does not reset the day's quota.
- :class:`RedisLimiter`: a Lua script on a shared Redis (``--workers N``, or several
  hosts). slowapi's in-memory storage counts per worker (slowapi #226), which multiplies
  every limit by the worker count: that is why there is no such mode here.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aegis.errors import AegisError, ConfigError
from aegis.fileutil import atomic_write, read_optional
from aegis.serve.clients import Client


@dataclass(frozen=True)
class Decision:
    """Whether a request fits; if not, which limit and when to retry (seconds)."""

    allowed: bool
    limit: str = ""  # "rate" or "quota"
    retry_after: float = 0.0


ALLOWED = Decision(allowed=True)


class LimitsUnavailable(Exception):
    """The shared counters cannot be reached (the gateway answers 503, admits no one)."""


class Limiter(Protocol):
    def admit(self, client: Client, rows: int) -> Decision: ...

    def close(self) -> None: ...


def _windows(client: Client, now: float) -> tuple[int, int]:
    return int(now // client.rate.seconds), int(now // client.quota.seconds)


def _wait(window: int, seconds: int, now: float) -> float:
    return (window + 1) * seconds - now


class MemoryLimiter:
    """Limits of one process."""

    def __init__(self, counters: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._rate: dict[str, tuple[int, int]] = {}  # client id -> (window, rows)
        self._quota: dict[str, tuple[int, int]] = {}
        self._path = counters
        self._dirty = False
        if counters is not None:
            self._quota = _read_counters(counters)

    def admit(self, client: Client, rows: int) -> Decision:
        now = time.time()
        rate_w, quota_w = _windows(client, now)
        with self._lock:
            rw, rused = self._rate.get(client.id, (rate_w, 0))
            qw, qused = self._quota.get(client.id, (quota_w, 0))
            rused = rused if rw == rate_w else 0
            qused = qused if qw == quota_w else 0
            if rused + rows > client.rate.count:
                return Decision(False, "rate", _wait(rate_w, client.rate.seconds, now))
            if qused + rows > client.quota.count:
                return Decision(False, "quota", _wait(quota_w, client.quota.seconds, now))
            self._rate[client.id] = (rate_w, rused + rows)
            self._quota[client.id] = (quota_w, qused + rows)
            self._dirty = True
        return ALLOWED

    def save(self) -> None:
        """Writes the quota windows (called by the gateway's flusher, not per request)."""
        if self._path is None or not self._dirty:
            return
        with self._lock:
            data = {k: list(v) for k, v in self._quota.items()}
            self._dirty = False
        try:
            atomic_write(self._path, json.dumps(data, sort_keys=True).encode() + b"\n")
        except BaseException:
            self._dirty = True  # not written: the next save tries again
            raise

    def close(self) -> None:
        self.save()


def _read_counters(path: Path) -> dict[str, tuple[int, int]]:
    """Quota windows saved by an earlier run; an unreadable file counts from zero."""
    try:
        raw = read_optional(path, limit=16 * 1024 * 1024, what=path.name)
        data = json.loads(raw) if raw else {}
        return {
            str(k): (int(v[0]), int(v[1]))
            for k, v in data.items()
            if isinstance(v, list) and len(v) == 2
        }
    except (ValueError, TypeError, OSError, AegisError):  # a FIFO, a symlink, junk: from zero
        return {}


# KEYS: rate window key, quota window key. ARGV: rows, rate limit, quota limit, rate ttl,
# quota ttl. Returns 0 (admitted), 1 (over the rate), 2 (over the quota).
_ADMIT = """
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local q = tonumber(redis.call('GET', KEYS[2]) or '0')
local rows = tonumber(ARGV[1])
if r + rows > tonumber(ARGV[2]) then return 1 end
if q + rows > tonumber(ARGV[3]) then return 2 end
redis.call('INCRBY', KEYS[1], rows)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], rows)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 0
"""


class RedisLimiter:
    """Limits shared by every worker and host that uses the same Redis."""

    def __init__(self, url: str, *, prefix: str = "aegis") -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - redis is a dependency
            raise ConfigError("--redis needs the redis package") from None
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            self._client.ping()
        except (redis.RedisError, ValueError) as exc:
            raise ConfigError(f"--redis {url}: cannot reach Redis ({exc})") from None
        self._script = self._client.register_script(_ADMIT)
        self._prefix = prefix
        self.error = redis.RedisError

    def admit(self, client: Client, rows: int) -> Decision:
        now = time.time()
        rate_w, quota_w = _windows(client, now)
        keys = [
            f"{self._prefix}:rate:{client.id}:{client.rate.seconds}:{rate_w}",
            f"{self._prefix}:quota:{client.id}:{client.quota.seconds}:{quota_w}",
        ]
        args = [rows, client.rate.count, client.quota.count]
        args += [client.rate.seconds + 1, client.quota.seconds + 1]
        try:
            result = int(self._script(keys=keys, args=args))
        except self.error as exc:  # limits that cannot be counted admit no one
            raise LimitsUnavailable(f"Redis: {exc}") from None
        if result == 1:
            return Decision(False, "rate", _wait(rate_w, client.rate.seconds, now))
        if result == 2:
            return Decision(False, "quota", _wait(quota_w, client.quota.seconds, now))
        return ALLOWED

    def close(self) -> None:
        self._client.close()
