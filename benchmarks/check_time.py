"""How long ``python -m optbench_jax.optim.check NAME`` takes, at its defaults, per built-in.

  python benchmarks/check_time.py [NAME ...]

Runs the contract check of every built-in optimizer (or the names given) as a
user would, one after the other, and prints per optimizer: its exit status, the
seconds until its first result line (PASS / FAIL) and until it ends, the peak
memory of the checks so far (``RUSAGE_CHILDREN``: the largest child yet) and its
last line. Wall times: take them on a quiet machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from optbench_jax.optim import registry  # noqa: E402


def main(names: list[str]) -> int:
  worst = 0
  for name in names or registry.builtin_names():
    start, first, last = time.time(), None, ""
    process = subprocess.Popen([sys.executable, "-m", "optbench_jax.optim.check", name],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
      if first is None and ("PASS" in line or "FAIL" in line):
        first = time.time() - start
      last = line.strip() or last
    process.wait()
    worst = max(worst, process.returncode)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    print(f"{name:22s} exit {process.returncode}  first result {first or float('nan'):5.1f} s  "
          f"total {time.time() - start:5.1f} s  peak {peak:.2f} GB  {last}", flush=True)
  return worst


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
