"""host_memory.retain_freed_memory: a freed large block is reused, not faulted in again."""

import pathlib
import subprocess
import sys

import pytest

from optbench_jax import host_memory

ROOT = pathlib.Path(__file__).resolve().parents[1]

# In a fresh process: allocate, touch and free a 64 MB block from a worker
# thread (as XLA's runtime threads do) twice; print the minor page faults of
# the second round.
PROBE = r"""
import ctypes, ctypes.util, resource, sys, threading
from optbench_jax import host_memory
if sys.argv[1] == "1":
  assert host_memory.retain_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def round_trip():   # malloc, write every page, free
  block = libc.malloc(64 * 2**20)
  ctypes.memset(block, 1, 64 * 2**20)
  libc.free(block)
for i in range(2):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  t = threading.Thread(target=round_trip); t.start(); t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_round_faults(retain: bool) -> int:
  out = subprocess.run([sys.executable, "-c", PROBE, "1" if retain else "0"], check=True, cwd=ROOT,
                       capture_output=True, text=True).stdout
  return int(out.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_block_is_reused_without_page_faults():
  pages = 64 * 2**20 // 4096
  assert _second_round_faults(retain=False) > pages // 2    # mmap + munmap: faulted again
  assert _second_round_faults(retain=True) < pages // 20    # the heap kept it


def test_opt_out_and_idempotent(monkeypatch):
  monkeypatch.setattr(host_memory, "_APPLIED", [])
  monkeypatch.setenv("OPTBENCH_RETAIN_HOST_MEMORY", "0")
  assert host_memory.retain_freed_memory() is False
  assert host_memory.retain_freed_memory() is False   # cached: applied at most once

