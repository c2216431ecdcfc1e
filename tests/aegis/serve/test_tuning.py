"""The gateway's process-wide memory settings."""

from __future__ import annotations

import platform

import pyarrow as pa

from aegis.serve.tuning import tune_memory


def test_large_blocks_stay_in_the_heap_and_arrow_uses_it():
    took = tune_memory()
    assert pa.default_memory_pool().backend_name == "system"
    # glibc (every Linux this runs on in CI) takes the settings; elsewhere they are skipped
    assert took == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
