"""Exceptions that map to the CLI's exit codes.

Exit code 1 is a refusal for a security or policy reason; exit code 2 is a
usage or configuration error. Every message names what failed, in one line.
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
    """

    exit_code = 1

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.detail = message

    def __reduce__(self):  # picklable across process boundaries (Prefect workers)
        return (type(self), (self.check, self.detail))


class TransientIOError(AegisError):
    """An I/O operation (S3, DVC remote) failed in a way worth retrying."""

    exit_code = 2
