"""Tests of params.yaml parsing: defaults, strictness, dotted error paths, no credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from aegis.config import IngestParams, Params, load_params, parse_params
from aegis.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def config_error(data: Any, *fragments: str, source: str = "params.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(data, source=source)
    message = str(info.value)
    assert message.startswith(f"{source}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- defaults and valid input ------------------------------------------------------------


@pytest.mark.parametrize("data", [None, {}, {"ingest": {}}])
def test_defaults(data: Any) -> None:
    params = parse_params(data)
    assert params == Params()
    assert params.ingest.max_file_bytes == 2 * 1024**3
    assert params.ingest.max_files == 10_000
    assert params.ingest.io_retries == 3
    assert params.ingest.io_retry_delay_s == 2.0


def test_values_are_read() -> None:
    params = parse_params(
        {
            "ingest": {
                "max_file_bytes": 1024,
                "max_files": 7,
                "io_retries": 0,
                "io_retry_delay_s": 0.5,
            }
        }
    )
    assert params.ingest == IngestParams(
        max_file_bytes=1024, max_files=7, io_retries=0, io_retry_delay_s=0.5
    )


def test_an_integer_is_accepted_for_a_float() -> None:
    # YAML reads "io_retry_delay_s: 2" as an int
    assert parse_params({"ingest": {"io_retry_delay_s": 2}}).ingest.io_retry_delay_s == 2.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_file_bytes", 1),
        ("max_files", 1),
        ("max_files", 1_000_000),
        ("io_retries", 0),
        ("io_retries", 10),
        ("io_retry_delay_s", 0),
        ("io_retry_delay_s", 300),
    ],
)
def test_bounds_are_inclusive_where_documented(key: str, value: int) -> None:
    assert getattr(parse_params({"ingest": {key: value}}).ingest, key) == value


def test_params_are_frozen() -> None:
    params = parse_params(None)
    with pytest.raises(pydantic.ValidationError):
        params.ingest.max_files = 1  # type: ignore[misc]


# -- refusals with the dotted path -----------------------------------------------------------


def test_unknown_top_level_key() -> None:
    config_error({"trian": {"epochs": 3}}, "params.yaml: trian:", "Extra inputs are not permitted")


def test_unknown_nested_key() -> None:
    config_error(
        {"ingest": {"max_file_bytes": 10, "max_filez": 3}},
        "params.yaml: ingest.max_filez:",
        "Extra inputs are not permitted",
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_files", "100", "valid integer"),
        ("max_files", 2.0, "valid integer"),  # strict: no silent float -> int
        ("max_files", True, "valid integer"),  # strict: a bool is not a count
        ("max_file_bytes", None, "valid integer"),
        ("io_retries", [3], "valid integer"),
        ("io_retry_delay_s", "2.0", "valid number"),
    ],
)
def test_wrong_type_names_the_path(key: str, value: Any, expected: str) -> None:
    config_error({"ingest": {key: value}}, f"params.yaml: ingest.{key}:", expected)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_file_bytes", -1, "greater than 0"),
        ("max_file_bytes", 0, "greater than 0"),
        ("max_files", 0, "greater than 0"),
        ("max_files", 1_000_001, "less than or equal to 1000000"),
        ("io_retries", -1, "greater than or equal to 0"),
        ("io_retries", 11, "less than or equal to 10"),
        ("io_retry_delay_s", -0.1, "greater than or equal to 0"),
        ("io_retry_delay_s", 300.5, "less than or equal to 300"),
    ],
)
def test_out_of_range_names_the_path(key: str, value: Any, expected: str) -> None:
    config_error({"ingest": {key: value}}, f"params.yaml: ingest.{key}:", expected)


@pytest.mark.parametrize("section", [None, "not a mapping", [1, 2], 5])
def test_section_that_is_not_a_mapping(section: Any) -> None:
    config_error({"ingest": section}, "params.yaml: ingest:")


@pytest.mark.parametrize("data", [[1, 2], "text", 3, ["ingest"]])
def test_top_level_must_be_a_mapping(data: Any) -> None:
    config_error(data, "top level must be a mapping of sections")


def test_source_name_is_used_in_messages() -> None:
    config_error({"ingest": {"max_files": -5}}, "ingest.max_files", source="other.yaml")


# -- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (
            {"ingest": {"aws_secret_access_key": "AKIA-SECRET-VALUE"}},
            "ingest.aws_secret_access_key",
        ),
        ({"ingest": {"aws_access_key_id": "AKIA-SECRET-VALUE"}}, "ingest.aws_access_key_id"),
        ({"password": "AKIA-SECRET-VALUE"}, "password"),
        ({"s3": {"endpoint": {"Token": "AKIA-SECRET-VALUE"}}}, "s3.endpoint.Token"),
        ({"db": {"PASSWD": "AKIA-SECRET-VALUE"}}, "db.PASSWD"),
        ({"ingest": {"credentials_file": "/home/x/.aws"}}, "ingest.credentials_file"),
        ({"sources": [{"url": "s3://b", "secret": "AKIA-SECRET-VALUE"}]}, "sources[0].secret"),
    ],
)
def test_credential_like_keys_are_refused(data: dict, path: str) -> None:
    message = config_error(data, f"params.yaml: {path}:", "never read from params", "environment")
    assert "AKIA-SECRET-VALUE" not in message  # the value itself is never echoed


def test_credentials_are_refused_before_other_errors() -> None:
    # An unknown section holding a secret must be refused for the secret, pointing at the
    # environment, not just as an unknown key.
    config_error(
        {"s3": {"secret_key": "x"}, "ingest": {"max_files": -1}},
        "s3.secret_key",
        "environment",
    )


def test_wrong_type_message_does_not_echo_the_value() -> None:
    message = config_error({"ingest": {"max_files": "hunter2-value"}}, "ingest.max_files")
    assert "hunter2-value" not in message


# -- load_params ---------------------------------------------------------------------------------


def test_the_repository_params_yaml_loads() -> None:
    path = REPO / "params.yaml"
    params = load_params(path)
    raw = yaml.safe_load(path.read_text())
    assert params.ingest.model_dump() == raw["ingest"]


def test_load_params_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("ingest:\n  max_files: 12  # comment\n  io_retry_delay_s: 1\n")
    params = load_params(path)
    assert params.ingest.max_files == 12
    assert params.ingest.io_retry_delay_s == 1.0
    assert params.ingest.io_retries == 3  # default kept


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_load_params_of_an_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path) == Params()


def test_load_params_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("ingest:\n  max_files: [1, 2\n", None),
        ("ingest:\n  max_files: 3\n bad_indent: 4\n", 3),
        ("ingest: {max_files: 1\n", None),
        ("\tingest: 1\n", 1),
    ],
)
def test_load_params_invalid_yaml(tmp_path: Path, text: str, line: int | None) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith("params.yaml: not valid YAML"), message
    if line is not None:
        assert f"(line {line})" in message


def test_load_params_refuses_what_parse_refuses(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("ingest:\n  max_file_bytes: -5\n")
    with pytest.raises(ConfigError, match=r"^custom\.yaml: ingest\.max_file_bytes: "):
        load_params(path)
    path.write_text("ingest:\n  aws_secret_access_key: abc\n")
    with pytest.raises(ConfigError, match="environment"):
        load_params(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(path)


def test_load_params_does_not_run_yaml_tags(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("ingest: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_load_params_of_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path)


def test_load_params_of_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01 binary")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_params(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_load_params_of_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("ingest: {}\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(path)


def test_override_params_merges_and_validates_before_writing(tmp_path):
    from aegis.config import override_params

    path = tmp_path / "params.yaml"
    path.write_text("ingest:\n  max_files: 5\n")
    params = override_params(path, {"train": {"epochs": 3}})
    assert params.train.epochs == 3 and params.ingest.max_files == 5
    assert "epochs: 3" in path.read_text()
    before = path.read_text()
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        override_params(path, {"train": {"epochs": 0}})
    assert path.read_text() == before  # nothing written when the result is invalid


@pytest.mark.parametrize("name", ["digits-model", "a", "m_1-X9", "x" * 100])
def test_model_name_accepts_gto_artifact_names(name: str) -> None:
    assert parse_params({"train": {"model_name": name}}).train.model_name == name


@pytest.mark.parametrize(
    "name", ["../../x", "a/b", "a.b", "ab-", "-ab", "_ab", "", "a b", "x" * 101, "é"]
)
def test_model_name_refuses_paths_and_names_gto_refuses(name: str) -> None:
    """It becomes releases/<name>/ and a git tag: nothing that escapes or fails at gto register."""
    with pytest.raises(ConfigError, match=r"train\.model_name"):
        parse_params({"train": {"model_name": name}})
