"""Per-trial overhead of a sweep or study with and without the shared compilation cache.

  python benchmarks/trial_overhead.py --config=configs/studies/cpu_mini.py --workdir=/tmp/oh \\
      [--parallel=2] [--optimizers=adamw,muon] [--order=off,on]

Runs the same sweep (``configs/sweeps/*.py``) or study (``configs/studies/*.py``)
twice, one after the other in this process, into ``WORKDIR/off`` (every trial
compiles its programs) and ``WORKDIR/on`` (the trials share JAX's persistent
compilation cache, ``optbench_jax.compilation_cache``; it starts empty), and
prints per run: trials, total wall time, and the per-trial overhead, i.e. the
trainer's in-process wall time minus steps x its measured step time (setup,
compiling, evaluations, checkpoints), as median and sum; then the ratio on/off.
``--optimizers`` keeps a subset of the config's optimizers (a shorter run).
These machines are noisy: compare the two rows of one run, not runs of
different days.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from optbench_jax.bench import results_store, study, sweep, sweep_config  # noqa: E402


def program(path: str, optimizers: list[str]):
  config = sweep_config.load_python_config(path)
  if optimizers:
    keep = {k: v for k, v in config.optimizers.items() if k in optimizers}
    missing = sorted(set(optimizers) - set(keep))
    if missing:
      raise SystemExit(f"--optimizers: {missing} not in {path}")
    config.optimizers = keep
  return study.StudyProgram(config) if "models" in config else config


def overheads(workdir: str) -> list[float]:
  with results_store.ResultsStore.open_existing(os.path.join(workdir, "results.sqlite")) as s:
    results = [r for r in s.latest() if r.status == results_store.COMPLETED]
  return [r.wall_time_s - r.steps * r.step_time_s for r in results
          if math.isfinite(r.wall_time_s) and math.isfinite(r.step_time_s)]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--parallel", type=int, default=2)
  parser.add_argument("--optimizers", default="")
  parser.add_argument("--order", default="off,on")
  args = parser.parse_args()
  optimizers = [o for o in args.optimizers.split(",") if o]
  rows = {}
  for mode in args.order.split(","):
    workdir = os.path.join(args.workdir, mode)
    began = time.perf_counter()
    outcome = sweep.run_sweep(program(args.config, optimizers), workdir,
                              parallel=args.parallel, compilation_cache=mode == "on",
                              log=lambda _: None)
    wall = time.perf_counter() - began
    values = overheads(workdir)
    rows[mode] = (len(values), wall, statistics.median(values), sum(values))
    print(f"{mode:>3}: {outcome.recorded} in {wall:.0f} s; per-trial overhead median "
          f"{rows[mode][2]:.2f} s, sum {rows[mode][3]:.0f} s over {len(values)} trials",
          flush=True)
  if {"on", "off"} <= set(rows):
    print(f"on/off: wall {rows['on'][1] / rows['off'][1]:.3f}, overhead median "
          f"{rows['on'][2] / rows['off'][2]:.3f}, overhead sum "
          f"{rows['on'][3] / rows['off'][3]:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
