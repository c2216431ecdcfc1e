"""Aegis: a secure ML training pipeline.

The core library. Nothing in this package imports Prefect; flows and tasks
wrap these functions, and the CLI (``aegis.cli``) wires them together.

Two process-wide start-up decisions live here, both measured, both left to
the operator when they set the variable themselves.
"""

import os
import sys

__version__ = "0.1.0"

# One BLAS thread unless the operator says otherwise. Aegis's matrices are small (digits-
# sized screen fits, monitor windows of 50-100 rows), where OpenBLAS's pool costs far more
# than it saves: the label-issue screen's logistic regression (1,400 x 64, 77 lbfgs steps)
# took 0.90 s with 2 threads and 0.07 s with 1, and the screen 18 s instead of 2 s.
# Torch keeps its own pool (``train.threads``). Set before numpy loads OpenBLAS; if numpy
# came first, its pool is limited in place. Subprocesses inherit the setting.
if "OPENBLAS_NUM_THREADS" not in os.environ:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")

# rfc3987-syntax (installed by cyclonedx-bom's validation extra, for the SBOM tool) compiles
# 38 grammars when imported: 1.3 s in every process that imports Prefect, whose jsonschema
# loads it for the "iri" format checks. Nothing in an Aegis process checks that format; the
# SBOM tool runs as its own process (``cyclonedx-py``) and keeps it. ``None`` in
# ``sys.modules`` makes the import fail, so jsonschema leaves that one checker out.
# AEGIS_KEEP_IRI_FORMAT=1 keeps it.
if os.environ.get("AEGIS_KEEP_IRI_FORMAT") != "1":
    sys.modules.setdefault("rfc3987_syntax", None)

# At exit, the cyclic garbage collector is frozen, not run. Finalizing a process that loaded
# torch, Prefect, Great Expectations and ART spends most of its time collecting their module
# graphs: 1.9 s, 0.4 s with the collector frozen (every CLI command, every flow-run process).
# atexit handlers, Prefect's log and event drains, stream flushes and module teardown still
# run (also those registered after this one, which atexit runs before it, and those before,
# which run after it with no collector, which they do not need); only objects kept alive by
# a reference cycle at exit are left to the OS, whose finalizers Python does not promise to
# run then anyway.
import atexit
import gc


def _freeze_collector() -> None:
    gc.disable()
    gc.freeze()


atexit.register(_freeze_collector)
