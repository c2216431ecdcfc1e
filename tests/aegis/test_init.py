"""The package's process-wide decisions: one BLAS thread, no IRI grammar, no collection at exit."""

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


# Registered before aegis is imported, so it runs after aegis's own exit handler (LIFO).
EXIT_PROBE = """
import atexit, gc, sys
atexit.register(lambda: print(gc.isenabled(), gc.get_freeze_count() > 0, flush=True))
import aegis
atexit.register(lambda: print("handlers still run", flush=True))
class Node:  # garbage in a cycle: the collector would normally take it
    pass
a, b = Node(), Node()
a.other, b.other = b, a
kept = open(sys.argv[1], "w")  # never closed: module teardown still flushes it
kept.write("written at exit")
"""


def test_the_collector_is_frozen_at_exit_and_nothing_else_is_skipped(tmp_path):
    target = tmp_path / "unclosed.txt"
    done = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, str(target)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["handlers still run", "False True"]
    assert target.read_text() == "written at exit"
