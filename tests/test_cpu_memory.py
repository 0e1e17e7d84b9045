"""glibc's malloc keeping freed memory on the CPU (dssd_d2.engine.cpu_memory): blocks freed and
allocated again no longer page-fault; DSSD_D2_KEEP_FREED_MEMORY=0, or malloc's own options in the
environment, keep glibc's settings. Each case runs in its own interpreter, as the setting lasts
for the process."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")

# Page faults of allocating and freeing ten 64 MB tensors, after three to warm up.
_FAULTS = """
import resource, sys, torch
from dssd_d2.engine import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else None)
for _ in range(3):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(mode, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = result.stdout.split()
    return applied, int(faults)


def test_freed_blocks_are_reused_without_page_faults():
    _, default = _run("default")
    applied, kept = _run("keep")
    assert applied == "True"
    # glibc maps each 64 MB block afresh: at least one fault per 2 MB (huge pages) of 640 MB
    assert default >= 320, default
    assert kept < default / 10, (kept, default)


@pytest.mark.parametrize(
    "env", [{"DSSD_D2_KEEP_FREED_MEMORY": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}]
)
def test_the_environment_can_keep_glibcs_own_settings(env):
    applied, faults = _run("keep", **env)
    assert applied == "False"
    assert faults >= 320, faults
