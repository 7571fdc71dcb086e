"""Host memory: keep freed large blocks in the process instead of handing them back each step.

XLA:CPU allocates every execution's temporary buffer (the step's activations,
an optimizer's scratch arrays) with ``posix_memalign`` from its runtime
threads, and frees it when the execution ends. glibc serves a block that
large from ``mmap`` in the thread's arena and returns it with ``munmap``, so
each step faults its temporaries in again, a page at a time, and the kernel
zeroes them: 112k minor faults (459 MB) per train step of the 4-layer
benchmark shape, 37k per C-AdamW update of one 12 x 768 x 2048 leaf, on the
2-core VM (BUILD_NOTES, CPU throughput). PyTorch's eager CPU tensors are each below
glibc's adaptive mmap threshold, so its heap keeps and reuses them.

:func:`retain_freed_memory` sets glibc's ``mallopt`` so that the heap keeps
its peak and reuses it: one arena (``M_ARENA_MAX=1``: only the main arena can
grow with ``brk``; thread arenas must ``mmap`` anything over 64 MB), no
``mmap`` for large blocks (``M_MMAP_MAX=0``) and no trimming of the top of
the heap (``M_TRIM_THRESHOLD``). The process's resident memory then stays at
its peak, which a training process reaches on its first step anyway.
It must run before the XLA client starts its threads (before the first
``jax.devices()`` or array); the trainer and the benchmarks call it first
thing. Set ``OPTBENCH_RETAIN_HOST_MEMORY=0`` to leave malloc alone. Not glibc
(macOS, musl): nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_APPLIED: list[bool] = []


def retain_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse (see the module docstring); True if it did.

  Idempotent; a no-op off Linux/glibc or when ``OPTBENCH_RETAIN_HOST_MEMORY=0``.
  """
  if _APPLIED:
    return _APPLIED[0]
  ok = False
  if sys.platform.startswith("linux") and os.environ.get("OPTBENCH_RETAIN_HOST_MEMORY") != "0":
    try:
      libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
      mallopt = libc.mallopt
      mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
      ok = all(mallopt(option, value) == 1 for option, value in (
          (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
    except (OSError, AttributeError):  # not glibc
      ok = False
  _APPLIED.append(ok)
  return ok
