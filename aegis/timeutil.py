"""UTC timestamps in one format everywhere (ISO 8601, microseconds, ``Z``)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Returns the current UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    """Parses a timestamp written by :func:`utc_now`.

    Raises:
        ValueError: ``text`` is not such a timestamp.
    """
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
