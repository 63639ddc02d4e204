"""``ctxlit.utils.malloc``: fit and the blocks benchmark keep freed memory for reuse (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: a Selective Kernel forward + backward, 10 steps after 3 warm-up steps: minor page faults per step
FAULTS_PER_STEP = """
import resource, sys, torch
from ctxlit.utils.malloc import keep_freed_memory
print(keep_freed_memory())
torch.set_num_threads(1)
from ctxlit.blocks import build_block
block, x = build_block("sk", 64), torch.randn(4, 64, 28, 28)
for step in range(13):
    if step == 3:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block(x).sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10)
"""


def faults_per_step(env: dict) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env=env, capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    said, faults = out.stdout.strip().splitlines()[-2:]
    return said, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_buffers_are_reused_instead_of_faulted_in_again(offline_env):
    said, kept = faults_per_step(offline_env)
    assert said.startswith("malloc: glibc ") and "freed memory kept for reuse (mmap threshold 32 MB, trim 256 MB" in said
    said, default = faults_per_step({**offline_env, "CTXLIT_SYSTEM_MALLOC": "1"})
    assert said == "malloc: left as configured (CTXLIT_SYSTEM_MALLOC set)"
    # measured here: 40-60 faults per step kept, 170-350 with glibc's defaults
    assert kept < default / 2, (kept, default)


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    from ctxlit.utils.malloc import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert keep_freed_memory() == "malloc: left as configured (MALLOC_TRIM_THRESHOLD_ set)"
