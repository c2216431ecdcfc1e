"""Turning CSV or Parquet into a signed dataset (Parquet + manifest + bundle)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from aegis.crypto.keys import load_private_key
from aegis.crypto.signing import KeySigner, sign_directory
from aegis.data.manifest import (
    BUNDLE_NAME,
    MANIFEST_NAME,
    ColumnSchema,
    DatasetManifest,
    ManifestFile,
    check_dataset_name,
)
from aegis.errors import UsageError
from aegis.timeutil import utc_now

_SUFFIXES = (".csv", ".parquet")


def _source_files(src: Path) -> list[Path]:
    if not src.exists():
        raise UsageError(f"{src}: not found")
    if src.is_file():
        files = [src]
    else:
        files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if p.suffix.lower() in _SUFFIXES]
    if not files:
        raise UsageError(f"{src}: no .csv or .parquet files to publish")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        raise UsageError(f"{src}: two files share a name stem; each becomes <stem>.parquet")
    return files


def _read_table(path: Path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".csv":
            return pacsv.read_csv(path)
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable input
        raise UsageError(f"{path}: cannot read as {path.suffix[1:]} ({exc})") from None


def read_source_frame(src: Path):
    """The rows of a CSV or Parquet file, or of a directory of them, as one table.

    Raises:
        UsageError: Unreadable input or mismatched schemas.
    """
    import pyarrow as pa

    tables = [_read_table(p) for p in _source_files(src)]
    try:
        return pa.concat_tables(tables).to_pandas()
    except pa.ArrowInvalid:
        raise UsageError(f"{src}: its files do not share one schema") from None


def publish_dataset(src: Path, *, name: str, key_path: Path, out: Path) -> DatasetManifest:
    """Writes a signed dataset to ``out`` (which must not exist or be empty).

    Args:
        src: A CSV or Parquet file, or a directory of them (all one schema).
        name: The dataset name written into the manifest.
        key_path: The supplier's private key.
        out: The dataset directory to create.

    Returns:
        The signed manifest.

    Raises:
        UsageError: Unreadable input, mismatched schemas, or ``out`` not empty.
    """
    import pyarrow.parquet as pq

    check_dataset_name(name)
    key = load_private_key(key_path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: exists and is not empty")
    files = _source_files(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename, so a failure leaves no half dataset.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        entries: list[ManifestFile] = []
        schema = None
        for path in files:
            table = _read_table(path)
            if schema is None:
                schema = table.schema
            elif not table.schema.equals(schema):
                raise UsageError(f"{path}: schema differs from {files[0].name}")
            target = tmp / f"{path.stem}.parquet"
            pq.write_table(table, target)
            data = target.read_bytes()
            entries.append(
                ManifestFile(
                    path=target.name,
                    bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    rows=table.num_rows,
                )
            )
        assert schema is not None
        manifest = DatasetManifest(
            name=name,
            created=utc_now(),
            supplier_key_id=key.key_id,
            files=entries,
            columns=[ColumnSchema(name=f.name, type=str(f.type)) for f in schema],
            rows=sum(e.rows for e in entries),
        )
        (tmp / MANIFEST_NAME).write_bytes(manifest.to_bytes())
        sign_directory(tmp, bundle_name=BUNDLE_NAME, signer=KeySigner(key.path))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def upload_dataset(directory: Path, url: str, *, retries: int = 3) -> int:
    """Uploads a signed dataset directory to an empty ``s3://bucket/prefix``.

    The signature (``dataset.sig``) goes last: a watcher that waits for it,
    and for two listings that agree, never sees a partial delivery as ready.

    Returns:
        The number of objects written.

    Raises:
        UsageError: The prefix already holds objects, or the bucket is missing.
        TransientIOError: S3 could not be reached.
    """
    from aegis.data.sources import parse_s3_url, s3_client, s3_errors

    bucket, prefix = parse_s3_url(url)
    if not prefix:
        raise UsageError(f"{url}: give a prefix for the delivery (s3://bucket/prefix)")
    client = s3_client(retries)
    files = sorted((p for p in directory.iterdir() if p.is_file()), key=lambda p: (
        p.name == BUNDLE_NAME, p.name))  # fmt: skip
    with s3_errors(url, doing="writing"):
        if client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"):
            raise UsageError(f"{url}: already holds objects (a delivery goes to a new prefix)")
        for path in files:
            client.upload_file(str(path), bucket, prefix + path.name)
    return len(files)
