"""Retrying I/O, and only I/O: verification failures are never retried."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from aegis.errors import TransientIOError

T = TypeVar("T")


def retry_io(
    fn: Callable[[], T],
    *,
    retries: int,
    delay_s: float,
    on_retry: Callable[[int, TransientIOError], None] | None = None,
) -> T:
    """Calls ``fn``, retrying on :class:`TransientIOError` with exponential back-off.

    Args:
        fn: The I/O operation.
        retries: How many times to retry after the first failure.
        delay_s: Delay before the first retry; doubles each time.
        on_retry: Called with the attempt number and the error before each retry.
    """
    for attempt in range(retries + 1):
        try:
            return fn()
        except TransientIOError as exc:
            if attempt == retries:
                raise
            if on_retry is not None:
                on_retry(attempt + 1, exc)
            time.sleep(delay_s * 2**attempt)
    raise AssertionError("unreachable")
