"""The package's import-time decisions: one BLAS thread, and no IRI grammar, unless asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = (
    "import json, {first}\n"
    "from threadpoolctl import threadpool_info\n"
    "print(json.dumps(sorted({{p['num_threads'] for p in threadpool_info()"
    " if p['user_api'] == 'blas'}})))"
)


def _blas_threads(first: str, **env: str) -> list[int]:
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("first", ["aegis, numpy", "numpy, aegis"])
def test_one_blas_thread_whatever_loads_first(first):
    assert _blas_threads(first) == [1]


def test_the_operators_setting_wins():
    assert _blas_threads("aegis, numpy", OPENBLAS_NUM_THREADS="2") == [2]


IRI_PROBE = (
    "import sys, aegis, jsonschema\n"
    "checker = jsonschema.Draft202012Validator.FORMAT_CHECKER\n"
    "jsonschema.validate({'a': 1}, {'properties': {'a': {'type': 'integer'}}})\n"
    "print('iri' in checker.checkers, sys.modules.get('rfc3987_syntax') is not None)"
)


@pytest.mark.parametrize("keep, expected", [(None, "False False"), ("1", "True True")])
def test_the_slow_iri_grammar_is_left_out_unless_asked(keep, expected):
    env = {k: v for k, v in os.environ.items() if k != "AEGIS_KEEP_IRI_FORMAT"}
    if keep:
        env["AEGIS_KEEP_IRI_FORMAT"] = keep
    out = subprocess.run(
        [sys.executable, "-c", IRI_PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == expected  # and jsonschema itself still validates either way
