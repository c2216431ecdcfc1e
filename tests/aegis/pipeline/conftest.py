"""Workspaces of the pipeline stage tests, built once per package and copied per test.

Digits ingested (the template's FAST_PARAMS committed), then validated with the
validation recorded in ``dvc.lock`` and git and pushed: an ingest and a validation
cost seconds, a copy milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Env, copy_env
from validation_helpers import ingest_digits, validate_digits


@pytest.fixture(scope="package")
def ingested_base(template_env, tmp_path_factory) -> Path:
    """The template with the pristine digits ingested (not validated)."""
    env = copy_env(template_env.root.parent, tmp_path_factory.mktemp("ingested") / "env")
    ingest_digits(env, env.dataset)
    return env.root.parent


@pytest.fixture(scope="package")
def validated_base(ingested_base, tmp_path_factory) -> Path:
    """Pristine digits ingested and validated: the drift reference of any later version."""
    env = copy_env(ingested_base, tmp_path_factory.mktemp("validated") / "env")
    validate_digits(env)
    return env.root.parent


@pytest.fixture
def ingested(ingested_base, tmp_path) -> Env:
    return copy_env(ingested_base, tmp_path / "env")


@pytest.fixture
def validated(validated_base, tmp_path) -> Env:
    return copy_env(validated_base, tmp_path / "env")
