"""Registry targets: ``name@vN``, ``name@vN.0.0``, ``name#stage``; everything else refused."""

from __future__ import annotations

import pytest

from aegis.errors import UsageError
from aegis.registry.targets import (
    Target,
    check_model_name,
    parse_target,
    version_number,
    version_str,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("digits-model@v3", Target("digits-model", version="v3.0.0")),
        ("digits-model@v3.0.0", Target("digits-model", version="v3.0.0")),
        ("m_1-x@v12", Target("m_1-x", version="v12.0.0")),
        ("digits-model#prod", Target("digits-model", stage="prod")),
        ("digits-model#bad", Target("digits-model", stage="bad")),
    ],
)
def test_parse_accepts_versions_and_stages(text, expected):
    target = parse_target(text)
    assert target == expected
    assert str(target) == (f"{expected.model}@{expected.version}" if expected.version else text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "digits-model",
        "digits-model@",
        "digits-model@3",
        "digits-model@v0",
        "digits-model@v01",
        "digits-model@v3.1.0",
        "digits-model@v3.0",
        "digits-model#",
        "digits-model#Prod",
        "digits-model#prod#3",
        "../x@v1",
        "-x@v1",
        "a/b@v1",
        "x@v1;rm",
        "digits model@v1",
    ],
)
def test_parse_refuses_everything_else_as_usage(text):
    with pytest.raises(UsageError) as info:
        parse_target(text)
    assert info.value.exit_code == 2
    assert "NAME@vN" in str(info.value)


def test_version_round_trip():
    assert version_str(3) == "v3.0.0"
    assert version_number("v3.0.0") == version_number("v3") == 3
    for bad in ("3", "v3.1.0", "v0", "vx"):
        with pytest.raises(UsageError):
            version_number(bad)


def test_model_names_that_could_escape_a_path_are_refused():
    assert check_model_name("digits-model") == "digits-model"
    for bad in ("a..b", "..", "a/b", "", "x" * 101):
        with pytest.raises(UsageError):
            check_model_name(bad)


@pytest.mark.parametrize("name", ["a.b", "ab-", "-ab", "_ab", "a..b", "x" * 101])
def test_model_names_follow_gtos_rule_without_slash(name):
    """The same rule as ``train.model_name``: what passes here also passes ``gto register``."""
    with pytest.raises(UsageError):
        check_model_name(name)
    with pytest.raises(UsageError):
        parse_target(f"{name}@v1")


@pytest.mark.parametrize("name", ["a", "A9", "digits-model", "m_1-x", "x" * 100])
def test_model_names_accepted(name):
    assert check_model_name(name) == name
    assert parse_target(f"{name}#prod").model == name
