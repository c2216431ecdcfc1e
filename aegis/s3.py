"""S3 as Aegis uses it: ``s3://bucket/prefix`` URLs, a client from the environment, errors.

Shared by ingest's staging, publishing, the watch, the DVC remote's encryption check
(``aegis/storage.py``) and the audit log's shipping (which the ledger imports, so this
module knows nothing of data or the ledger).
Credentials come only from the standard AWS environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from aegis.errors import TransientIOError, UsageError


def parse_s3_url(url: str, *, what: str = "") -> tuple[str, str]:
    """Splits ``s3://bucket/prefix`` into bucket and a prefix ending in ``/`` (or empty).

    Raises:
        UsageError: Not an ``s3://`` URL with a bucket (``what`` names the setting).
    """
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UsageError(f"{what + ' ' if what else ''}{url}: expected s3://bucket/prefix")
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parsed.netloc, prefix


def s3_client(
    retries: int,
    *,
    connect_timeout: float = 60,
    read_timeout: float = 60,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_pool_connections: int = 10,
) -> Any:
    """A boto3 S3 client from the standard AWS environment (``AWS_ENDPOINT_URL`` for MinIO).

    ``endpoint_url`` and ``region``, when given (a DVC remote's own ``endpointurl`` and
    ``region``), take precedence over the environment's.
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or None,
        config=Config(
            retries={"mode": "standard", "max_attempts": 1 + retries},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
        ),
    )  # fmt: skip


_PERMANENT = ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")


@contextlib.contextmanager
def s3_errors(url: str, *, doing: str) -> Iterator[None]:
    """Maps boto3's errors on ``url`` to Aegis's: a missing bucket or a bad credential is
    the user's to fix (:class:`UsageError`), anything else may pass (:class:`TransientIOError`).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _PERMANENT:
            raise UsageError(f"{url}: {code}") from None
        raise TransientIOError(f"S3 error {doing} {url}: {code or exc}") from None
    except BotoCoreError as exc:
        raise TransientIOError(f"S3 unreachable {doing} {url}: {exc}") from None
