"""``manifest.json``: what a signed dataset claims to contain."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aegis.errors import RefusedError, UnsafeFileError, UsageError
from aegis.fileutil import read_regular
from aegis.timeutil import parse_utc

MANIFEST_NAME = "manifest.json"
BUNDLE_NAME = "dataset.sig"
FORMAT = "aegis-dataset/1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestFile(_Frozen):
    """One Parquet file of the dataset."""

    path: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)


class ColumnSchema(_Frozen):
    name: str
    type: str


class DatasetManifest(_Frozen):
    """The supplier's signed description of a dataset."""

    format: str = FORMAT
    name: str = Field(pattern=NAME_PATTERN)
    created: str = Field(pattern=TIMESTAMP_PATTERN)
    supplier_key_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: list[ManifestFile]
    columns: list[ColumnSchema]
    rows: int = Field(ge=0)

    @field_validator("created")
    @classmethod
    def _one_timestamp(cls, value: str) -> str:
        # The supplier writes it and Aegis puts it into commit messages and
        # orders versions by it: one timestamp in Aegis's own format, nothing else.
        try:
            parse_utc(value)
        except ValueError:
            raise ValueError("not a UTC timestamp (YYYY-MM-DDTHH:MM:SS.ffffffZ)") from None
        return value

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2).encode() + b"\n"


def check_dataset_name(name: str) -> None:
    """Refuses names that are not a plain identifier (they become paths).

    Raises:
        UsageError: The name is empty, too long, or has other characters.
    """
    if not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(f"dataset name {name!r}: use letters, digits, '_', '-' or '.'")
    if name.lower().endswith(".dvc"):  # data/<name> sits beside DVC's data/<name>.dvc
        raise UsageError(f"dataset name {name!r}: must not end in '.dvc'")


def dataset_digest(manifest_bytes: bytes) -> str:
    """The dataset's identity: SHA-256 of its signed manifest (which lists every file's hash)."""
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def parse_manifest(path: Path) -> tuple[DatasetManifest, bytes]:
    """Reads and validates ``manifest.json``.

    Raises:
        RefusedError: ``manifest`` check: missing, not JSON, or malformed.
    """
    try:
        raw = read_regular(path, limit=64 * 1024 * 1024, what=MANIFEST_NAME)
    except FileNotFoundError:
        raise RefusedError("manifest", f"{MANIFEST_NAME} is missing") from None
    except UnsafeFileError as exc:
        raise RefusedError("manifest", exc.detail) from None
    try:
        manifest = DatasetManifest.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise RefusedError("manifest", f"{MANIFEST_NAME} is not valid JSON") from None
        where = ".".join(str(p) for p in err["loc"])
        raise RefusedError("manifest", f"{MANIFEST_NAME}: {where}: {err['msg']}") from None
    if manifest.format != FORMAT:
        raise RefusedError("manifest", f"{MANIFEST_NAME}: unknown format '{manifest.format}'")
    return manifest, raw
