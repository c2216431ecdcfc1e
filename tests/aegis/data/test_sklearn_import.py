"""Demo datasets from scikit-learn's bundled copies (no network)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from aegis.data.sklearn_import import import_sklearn
from aegis.errors import UsageError


def test_import_digits(tmp_path):
    out = tmp_path / "raw"  # created if missing
    path = import_sklearn("digits", out=out)
    assert path == out / "digits.parquet"
    table = pq.read_table(path)
    assert table.num_rows == 1797
    assert table.num_columns == 65
    assert table.column_names[-1] == "label"
    assert table.column_names[:2] == ["pixel_0_0", "pixel_0_1"]
    assert str(table.schema.field("label").type) == "int64"
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))


def test_import_breast_cancer(tmp_path):
    path = import_sklearn("breast_cancer", out=tmp_path)
    table = pq.read_table(path)
    assert table.num_rows == 569
    assert table.num_columns == 31
    assert "mean_radius" in table.column_names  # "mean radius" in snake_case
    assert all(c == c.lower() and " " not in c for c in table.column_names)
    assert str(table.schema.field("label").type) == "int64"
    assert sorted(set(table.column("label").to_pylist())) == [0, 1]


def test_import_is_deterministic(tmp_path):
    a = import_sklearn("digits", out=tmp_path / "a")
    b = import_sklearn("digits", out=tmp_path / "b")
    assert pq.read_table(a).equals(pq.read_table(b))


@pytest.mark.parametrize("name", ["iris", "", "../digits", "DIGITS"])
def test_import_refuses_unknown_name(name, tmp_path):
    with pytest.raises(UsageError, match="unknown demo dataset"):
        import_sklearn(name, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_existing_output(tmp_path):
    target = tmp_path / "digits.parquet"
    target.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        import_sklearn("digits", out=tmp_path)
    assert target.read_bytes() == b"precious"


def test_cli_import_sklearn(tmp_path, cli):
    res = cli("data", "import-sklearn", "breast_cancer", "--out", tmp_path)
    assert res.code == 0, res.err
    assert pq.read_table(tmp_path / "breast_cancer.parquet").num_rows == 569
    res = cli("data", "import-sklearn", "breast_cancer", "--out", tmp_path)
    assert res.code == 2
    assert "already exists" in res.err
    res = cli("data", "import-sklearn", "wine", "--out", tmp_path)
    assert res.code == 2
    assert "unknown demo dataset 'wine'" in res.err
