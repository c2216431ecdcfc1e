"""Exceptions that map to the CLI's exit codes.

Exit code 1 is a refusal for a security or policy reason; exit code 2 is a
usage or configuration error. Every message names what failed, in one line.

Refusals that code branches on have their own subclass (python-tuf style),
so control flow never parses a message or compares ``check`` strings.
"""

from __future__ import annotations


class AegisError(Exception):
    """Base class for errors that the CLI reports as one line."""

    exit_code = 2


class UsageError(AegisError):
    """The command was called wrongly (bad argument, missing file)."""

    exit_code = 2


class ConfigError(AegisError):
    """A configuration file (params.yaml, workspace) is missing or invalid."""

    exit_code = 2


class RefusedError(AegisError):
    """A security or policy check refused the operation.

    Attributes:
        check: Short name of the failed check (for example ``integrity``).
        detail: The message without the check's name.
    """

    exit_code = 1
    default_check = "refused"

    def __init__(self, check: str | None = None, message: str = "") -> None:
        check = check or self.default_check
        super().__init__(f"{check}: {message}")
        self.check = check
        self.detail = message

    def __reduce__(self):  # picklable across process boundaries (Prefect workers)
        return (type(self), (self.check, self.detail))


class _NamedRefusal(RefusedError):
    """A refusal whose check is known by its class: raised with the message first."""

    def __init__(self, message: str, check: str | None = None) -> None:
        super().__init__(check or self.default_check, message)

    def __reduce__(self):
        return (type(self), (self.detail, self.check))


class AuditError(_NamedRefusal):
    """The audit log does not verify (edited, truncated, appended by hand)."""

    default_check = "audit"


class TrustStoreError(AuditError):
    """The trust store does not verify, or is not the one the audit log last recorded."""

    default_check = "trust-store"


class FreshnessError(AuditError):
    """The audit log or trust store is older than what git records (a restored copy)."""

    default_check = "freshness"


class UnsafeFileError(_NamedRefusal):
    """A workspace file is a symlink, FIFO or device, or larger than its limit."""

    default_check = "file"


class StalePlanError(_NamedRefusal):
    """A registry change was planned before the lock and the registry moved meanwhile."""

    default_check = "registry"


class TransientIOError(AegisError):
    """An I/O operation (S3, DVC remote) failed in a way worth retrying."""

    exit_code = 2
