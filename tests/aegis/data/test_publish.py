"""Publishing signed datasets: CSV, Parquet, directories; manifest facts; refusals.

The bundle is checked with model_signing's own public API, as a downstream
consumer without Aegis would check it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import model_signing
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from aegis.crypto.keys import PrivateKey, generate_key
from aegis.data.manifest import BUNDLE_NAME, MANIFEST_NAME, DatasetManifest, parse_manifest
from aegis.data.publish import publish_dataset
from aegis.errors import UsageError
from aegis.timeutil import parse_utc


@pytest.fixture
def key(tmp_path: Path) -> PrivateKey:
    (tmp_path / "keys").mkdir()
    return generate_key(tmp_path / "keys" / "supplier.pem")


def _table(start: int, n: int) -> pa.Table:
    return pa.table(
        {
            "x": pa.array([float(i) / 2 for i in range(start, start + n)], pa.float64()),
            "label": pa.array([i % 3 for i in range(start, start + n)], pa.int64()),
        }
    )


def verify_with_model_signing(directory: Path, public_key: Path) -> None:
    """Raises if the bundle does not verify (model_signing's public API only)."""
    (
        model_signing.verifying.Config()
        .use_elliptic_key_verifier(public_key=public_key)
        .set_hashing_config(
            model_signing.hashing.Config().set_ignored_paths(
                paths=[BUNDLE_NAME], ignore_git_paths=False
            )
        )
        .verify(directory, directory / BUNDLE_NAME)
    )


def _pub(key: PrivateKey) -> Path:
    return key.path.with_name(key.path.name + ".pub")


def _check_published(out: Path, manifest: DatasetManifest, key: PrivateKey, name: str) -> None:
    """Facts every published dataset must satisfy."""
    data_files = sorted(p.name for p in out.iterdir() if p.suffix == ".parquet")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*data_files, MANIFEST_NAME, BUNDLE_NAME]
    )
    on_disk, raw = parse_manifest(out / MANIFEST_NAME)
    assert on_disk == manifest
    assert raw == manifest.to_bytes()
    assert manifest.name == name
    assert manifest.supplier_key_id == key.key_id
    created = parse_utc(manifest.created)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    assert [f.path for f in manifest.files] == data_files
    for entry in manifest.files:
        data = (out / entry.path).read_bytes()
        assert entry.bytes == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.rows == pq.ParquetFile(out / entry.path).metadata.num_rows
    assert manifest.rows == sum(f.rows for f in manifest.files)
    # the bundle names the signer and verifies with model_signing alone
    bundle = json.loads((out / BUNDLE_NAME).read_text())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == key.key_id
    verify_with_model_signing(out, _pub(key))


def _leftovers(parent: Path, out: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}."))


# -- accepted inputs -------------------------------------------------------------------------


def test_publish_csv_file(tmp_path, key):
    src = tmp_path / "iris.csv"
    src.write_text("sepal,petal,species\n5.1,1.4,setosa\n7.0,4.7,versicolor\n6.3,6.0,virginica\n")
    out = tmp_path / "out"

    manifest = publish_dataset(src, name="iris", key_path=key.path, out=out)

    _check_published(out, manifest, key, "iris")
    assert [f.path for f in manifest.files] == ["iris.parquet"]
    assert manifest.rows == 3
    assert [(c.name, c.type) for c in manifest.columns] == [
        ("sepal", "double"),
        ("petal", "double"),
        ("species", "string"),
    ]
    assert pq.read_table(out / "iris.parquet").equals(pacsv.read_csv(src))


def test_publish_parquet_file(tmp_path, key):
    src = tmp_path / "points.parquet"
    pq.write_table(_table(0, 5), src)
    out = tmp_path / "out"

    manifest = publish_dataset(src, name="points", key_path=key.path, out=out)

    _check_published(out, manifest, key, "points")
    assert manifest.rows == 5
    assert [(c.name, c.type) for c in manifest.columns] == [("x", "double"), ("label", "int64")]
    assert pq.read_table(out / "points.parquet").equals(_table(0, 5))


def test_publish_directory_of_parquet_files(tmp_path, key):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(_table(0, 3), src / "a.parquet")
    pq.write_table(_table(3, 4), src / "b.parquet")
    (src / "README.txt").write_text("not data")  # not .csv/.parquet: skipped
    pq.write_table(_table(0, 99), src / ".hidden.parquet")  # hidden: skipped
    out = tmp_path / "out"

    manifest = publish_dataset(src, name="points", key_path=key.path, out=out)

    _check_published(out, manifest, key, "points")
    assert [(f.path, f.rows) for f in manifest.files] == [("a.parquet", 3), ("b.parquet", 4)]
    assert manifest.rows == 7


def test_publish_into_existing_empty_directory(tmp_path, key):
    src = tmp_path / "p.parquet"
    pq.write_table(_table(0, 2), src)
    out = tmp_path / "out"
    out.mkdir()
    manifest = publish_dataset(src, name="p", key_path=key.path, out=out)
    _check_published(out, manifest, key, "p")


def test_model_signing_rejects_any_changed_file(tmp_path, key):
    """Sanity of the check above: a changed data file or manifest fails verification."""
    src = tmp_path / "p.parquet"
    pq.write_table(_table(0, 10), src)
    out = tmp_path / "out"
    publish_dataset(src, name="p", key_path=key.path, out=out)
    for name in ("p.parquet", MANIFEST_NAME):
        original = (out / name).read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        (out / name).write_bytes(bytes(data))
        with pytest.raises(ValueError):
            verify_with_model_signing(out, _pub(key))
        (out / name).write_bytes(original)
    verify_with_model_signing(out, _pub(key))


def test_cli_data_publish(tmp_path, key, cli):
    src = tmp_path / "p.parquet"
    pq.write_table(_table(0, 4), src)
    out = tmp_path / "out"
    res = cli("data", "publish", src, "--name", "p", "--key", key.path, "--out", out)
    assert res.code == 0, res.err
    assert "1 file(s), 4 rows" in res.out
    manifest, _ = parse_manifest(out / MANIFEST_NAME)
    _check_published(out, manifest, key, "p")


# -- refusals: UsageError, nothing written ---------------------------------------------------


def _mismatched_schemas(src: Path) -> Path:
    src.mkdir()
    pq.write_table(_table(0, 3), src / "a.parquet")
    pq.write_table(_table(0, 3).rename_columns(["x", "target"]), src / "b.parquet")
    return src


def _mismatched_types(src: Path) -> Path:
    src.mkdir()
    pq.write_table(_table(0, 3), src / "a.parquet")
    pq.write_table(
        _table(0, 3).cast(pa.schema([("x", pa.float32()), ("label", pa.int64())])),
        src / "b.parquet",
    )
    return src


def _no_data_files(src: Path) -> Path:
    src.mkdir()
    (src / "notes.txt").write_text("x")
    (src / "data.json").write_text("{}")
    return src


def _empty_dir(src: Path) -> Path:
    src.mkdir()
    return src


def _unreadable_csv(src: Path) -> Path:
    path = src.with_suffix(".csv")
    path.write_text("a,b\n1,2\n3,4,5,6\n")  # ragged row
    return path


def _empty_csv(src: Path) -> Path:
    path = src.with_suffix(".csv")
    path.write_bytes(b"")
    return path


def _not_parquet(src: Path) -> Path:
    path = src.with_suffix(".parquet")
    path.write_text("a,b\n1,2\n")
    return path


def _shared_stem(src: Path) -> Path:
    src.mkdir()
    pq.write_table(_table(0, 3), src / "a.parquet")
    pacsv.write_csv(_table(3, 3), src / "a.csv")
    return src


def _missing(src: Path) -> Path:
    return src / "nope.parquet"


SOURCE_REFUSALS = {
    "mismatched-schemas": (_mismatched_schemas, "schema differs"),
    "mismatched-types": (_mismatched_types, "schema differs"),
    "no-data-files": (_no_data_files, "no .csv or .parquet files"),
    "empty-directory": (_empty_dir, "no .csv or .parquet files"),
    "unreadable-csv": (_unreadable_csv, "cannot read as csv"),
    "empty-csv": (_empty_csv, "cannot read as csv"),
    "not-parquet": (_not_parquet, "cannot read as parquet"),
    "shared-stem": (_shared_stem, "share a name stem"),
    "missing-source": (_missing, "not found"),
}


@pytest.mark.parametrize("case", list(SOURCE_REFUSALS))
def test_publish_refuses_bad_source(case, tmp_path, key):
    make, message = SOURCE_REFUSALS[case]
    src = make(tmp_path / "src")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        publish_dataset(src, name="d", key_path=key.path, out=out)
    assert not out.exists()
    assert _leftovers(tmp_path, out) == []


def test_publish_refuses_non_empty_out(tmp_path, key):
    src = tmp_path / "p.parquet"
    pq.write_table(_table(0, 2), src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"keep me")
    with pytest.raises(UsageError, match="exists and is not empty"):
        publish_dataset(src, name="p", key_path=key.path, out=out)
    assert [p.name for p in out.iterdir()] == ["old.parquet"]
    assert (out / "old.parquet").read_bytes() == b"keep me"
    assert _leftovers(tmp_path, out) == []


def test_publish_refuses_out_that_is_a_file(tmp_path, key):
    src = tmp_path / "p.parquet"
    pq.write_table(_table(0, 2), src)
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(UsageError, match="exists and is not empty"):
        publish_dataset(src, name="p", key_path=key.path, out=out)
    assert out.read_text() == "a file"


@pytest.mark.parametrize(
    "name",
    ["", "../evil", "a/b", ".hidden", "-flag", "has space", "x" * 65, "ünïcode", "digits\n"],
)
def test_publish_refuses_bad_dataset_name(name, tmp_path, key):
    src = tmp_path / "p.parquet"
    pq.write_table(_table(0, 2), src)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="dataset name"):
        publish_dataset(src, name=name, key_path=key.path, out=out)
    assert not out.exists()
    assert _leftovers(tmp_path, out) == []


def test_publish_refuses_missing_or_bad_key(tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(_table(0, 2), src)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="key file not found"):
        publish_dataset(src, name="p", key_path=tmp_path / "nokey.pem", out=out)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        publish_dataset(src, name="p", key_path=bad, out=out)
    assert not out.exists()


def test_cli_data_publish_refusal_is_one_line(tmp_path, key, cli):
    src = _mismatched_schemas(tmp_path / "src")
    res = cli("data", "publish", src, "--name", "d", "--key", key.path, "--out", tmp_path / "o")
    assert res.code == 2
    assert res.err.strip().startswith("error:")
    assert "schema differs" in res.err
    assert len(res.err.strip().splitlines()) == 1
