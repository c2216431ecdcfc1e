"""Fixtures for the registry tests: a workspace with two signed releases.

``released_env`` (function scope) is a private copy of a workspace built once
per session by ``release_helpers.build_released``: digits ingested and
validated, ``digits-model@v1.0.0`` and ``digits-model@v2.0.0`` released
(v2 trained with ``train.seed: 1``), both pushed to nothing yet (local DVC
cache only), an operator (``ops``, owner alice) and two approvers
(``approver-bob``, owner bob; ``approver-carol``, owner carol). See
``release_helpers.ReleasedEnv`` for its attributes: ``root``, ``ws``,
``keys`` (by role), ``operator_key``, ``approver_key``, ``approver2_key``,
``supplier_key``, ``v1``, ``v2``, ``model``, ``release_dir(n)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from release_helpers import ReleasedEnv, build_released, copy_released


@pytest.fixture(scope="session")
def sbom_cache(request) -> Path:
    """A persistent SBOM cache (keyed by the environment, so never stale): saves ~15 s."""
    path = Path(request.config.cache.mkdir("aegis-cache"))
    os.environ.setdefault("AEGIS_CACHE_DIR", str(path))
    return Path(os.environ["AEGIS_CACHE_DIR"])


@pytest.fixture(scope="session")
def released_base(request, tmp_path_factory, sbom_cache) -> Path:
    """The session's released workspace (do not modify: use ``released_env``).

    ``AEGIS_TEST_RELEASED_BASE=DIR`` (opt-in, for iterating on registry tests)
    builds it once into DIR and reuses it in later sessions; delete DIR after
    changing how releases are built.
    """
    reuse = os.environ.get("AEGIS_TEST_RELEASED_BASE")
    if reuse and (Path(reuse) / "ws" / "releases").is_dir():
        return Path(reuse)
    template_env = request.getfixturevalue("template_env")
    base = Path(reuse) if reuse else tmp_path_factory.mktemp("released") / "env"
    build_released(template_env.root.parent, base)
    return base


@pytest.fixture
def released_env(released_base: Path, tmp_path: Path) -> ReleasedEnv:
    """A private copy of a workspace with releases v1 and v2 (see the module docstring)."""
    return copy_released(released_base, tmp_path / "env")
