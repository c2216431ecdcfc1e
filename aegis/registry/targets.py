"""Registry targets: ``name@v3`` / ``name@v3.0.0`` (a version) or ``name#prod`` (a stage)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aegis.errors import UsageError

# GTO's artifact-name rule without '/' (the same as ``train.model_name``): 1-100 letters,
# digits, '_' and '-', starting and ending with a letter or digit.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,98}[A-Za-z0-9])?"
_VERSION = re.compile(rf"^(?P<model>{_NAME})@v(?P<major>[1-9][0-9]{{0,5}})(?:\.0\.0)?$")
_STAGE = re.compile(rf"^(?P<model>{_NAME})#(?P<stage>[a-z][a-z0-9_-]{{0,31}})$")
_MODEL = re.compile(rf"^{_NAME}$")


@dataclass(frozen=True)
class Target:
    """A model version or the version holding a stage."""

    model: str
    version: str | None = None  # semver, "v3.0.0"
    stage: str | None = None

    def __str__(self) -> str:
        return f"{self.model}@{self.version}" if self.version else f"{self.model}#{self.stage}"


def version_str(number: int) -> str:
    """Returns the semver Aegis gives release ``number`` (``3`` -> ``v3.0.0``)."""
    return f"v{number}.0.0"


def version_number(version: str) -> int:
    """Returns the major number of ``vN.0.0`` (or ``vN``).

    Raises:
        UsageError: Not a version Aegis writes.
    """
    match = re.fullmatch(r"v([1-9][0-9]{0,5})(?:\.0\.0)?", version)
    if not match:
        raise UsageError(f"'{version}': versions are vN or vN.0.0")
    return int(match.group(1))


def check_model_name(name: str) -> str:
    """Refuses a model name GTO or a path could not hold safely."""
    if not _MODEL.fullmatch(name):
        raise UsageError(
            f"'{name}': model names are 1-100 letters, digits, '_' and '-', starting and "
            "ending with a letter or digit"
        )
    return name


def parse_target(text: str) -> Target:
    """Parses ``name@vN``, ``name@vN.0.0`` or ``name#stage``.

    Raises:
        UsageError: Anything else (the message shows the accepted forms).
    """
    if match := _VERSION.fullmatch(text):
        return Target(model=check_model_name(match["model"]), version=f"v{match['major']}.0.0")
    if match := _STAGE.fullmatch(text):
        return Target(model=check_model_name(match["model"]), stage=match["stage"])
    raise UsageError(f"'{text}': a target is NAME@vN, NAME@vN.0.0 or NAME#prod")


def parse_release_arg(text: str):
    """A release directory or a registry target, never ambiguous.

    A path has a ``/`` in it or starts with ``.`` or ``~`` (``./digits-model#prod``,
    ``releases/digits-model/v3``); anything else is a target (``NAME@vN``,
    ``NAME@vN.0.0``, ``NAME#STAGE``), whatever directories the current folder holds.

    Returns:
        A ``Path`` (unresolved) or a :class:`Target`.

    Raises:
        UsageError: Empty, or neither form.
    """
    from pathlib import Path

    if not text.strip():
        raise UsageError("a release is NAME@vN, NAME#STAGE or a directory path (with a '/')")
    if "/" in text or text.startswith((".", "~")):
        return Path(text).expanduser()
    return parse_target(text)
