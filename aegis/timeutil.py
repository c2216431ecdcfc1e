"""UTC timestamps in one format everywhere (ISO 8601, microseconds, ``Z``)."""

from __future__ import annotations

from datetime import UTC, datetime

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """Returns the current UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return format_utc(datetime.now(UTC))


def format_utc(moment: datetime) -> str:
    """``moment`` (a UTC datetime) in the format :func:`utc_now` writes."""
    return moment.strftime(FORMAT)


def parse_utc(text: str) -> datetime:
    """Parses a timestamp written by :func:`utc_now`.

    Raises:
        ValueError: ``text`` is not such a timestamp.
    """
    return datetime.strptime(text, FORMAT).replace(tzinfo=UTC)
