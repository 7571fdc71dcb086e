r"""Multi-host test harness: N trainer processes on this machine, started the way a slice runs them.

Each process is one "host" with ``devices`` CPU devices; they share a
coordinator on 127.0.0.1 at a free port and talk through JAX's CPU collectives
(gloo). Every process gets the same command line; only ``JAX_PROCESS_ID``
differs (``optbench_jax.process_group``, the launcher a multi-process sweep
trial uses too). Every process started here is stopped when the ``with`` block
ends, also when a test fails.

By hand, for debugging (host i's output goes to ``<workdir>.host<i>.log``):

  python -m tests.multihost --processes=2 --devices=4 --workdir=/tmp/mh -- \
      --config=configs/tiny.py --config.train.steps=40 --config.mesh.data=2 --config.mesh.fsdp=4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Iterator, Mapping, Sequence

from optbench_jax.process_group import ProcessGroup

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configs/tiny.py cut to seconds: a small corpus, 40 steps, records every 5.
TINY = {
    "config.data.synthetic_train_tokens": 200_000, "config.data.synthetic_val_tokens": 20_000,
    "config.data.global_batch_size": 16, "config.data.seq_len": 32,
    "config.train.steps": 40, "config.train.log_every": 5, "config.train.eval_every": 0,
    "config.train.checkpoint_every": 20, "config.optimizer.schedule.warmup_steps": 5,
}


def trainer_argv(workdir: str, overrides: Mapping[str, object] | None = None,
                 flags: Sequence[str] = ()) -> list[str]:
  """``python -m trainers.lm --config=configs/tiny.py`` with ``TINY`` and ``overrides``."""
  values = dict(TINY, **(overrides or {}))
  return ([sys.executable, "-m", "trainers.lm",
           f"--config={os.path.join(REPO_ROOT, 'configs', 'tiny.py')}", f"--workdir={workdir}"]
          + [f"--{key}={value}" for key, value in values.items()] + list(flags))


def host_log(workdir: str, index: int) -> str:
  return f"{workdir.rstrip('/')}.host{index}.log"


@contextlib.contextmanager
def start(argv: Sequence[str], workdir: str, processes: int, devices: int) -> Iterator[ProcessGroup]:
  """Starts ``processes`` copies of ``argv`` (``devices`` CPU devices each); stops them on exit."""
  logs = [open(host_log(workdir, i), "w") for i in range(processes)]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p))
  try:
    with ProcessGroup(argv, processes, local_device_count=devices, env=env, cwd=REPO_ROOT,
                      outputs=logs) as group:
      yield group
  finally:
    for log in logs:
      log.close()


def read_log(workdir: str, index: int) -> str:
  with open(host_log(workdir, index), errors="replace") as f:
    return f.read()


def records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def losses(workdir: str) -> dict[int, float]:
  """``{step: logged training loss}`` of the run in ``workdir``."""
  return {int(r["step"]): float(r["loss"]) for r in records(workdir) if "loss" in r}


def summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def wait_for_step(workdir: str, step: int, group: ProcessGroup, timeout: float) -> None:
  """Waits until ``metrics.jsonl`` has a record at or past ``step`` (the processes still run)."""
  deadline = time.monotonic() + timeout
  while not any(r.get("step", 0) >= step for r in records(workdir)):
    if group.poll() is not None:
      raise RuntimeError(f"the processes exited ({group.returncodes()}) before step {step}:\n"
                         + read_log(workdir, 0)[-3000:])
    if time.monotonic() > deadline:
      raise TimeoutError(f"no record at step {step} in {workdir} after {timeout:g} s")
    time.sleep(0.05)


def run(argv: Sequence[str], workdir: str, processes: int, devices: int,
        timeout: float = 300.0, signal_at_step: int | None = None,
        signum: int = signal.SIGTERM, signal_process: int | None = None) -> list[int | None]:
  """Runs the group to the end; optionally sends ``signum`` once ``signal_at_step`` is logged.

  ``signal_process``: the one process to signal (default: all). Returns every
  process's exit status. Raises TimeoutError (after stopping them) past ``timeout``.
  """
  with start(argv, workdir, processes, devices) as group:
    if signal_at_step is not None:
      wait_for_step(workdir, signal_at_step, group, timeout)
      group.send_signal(signum, signal_process)
    group.wait(timeout)
    return group.returncodes()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices", type=int, default=4, help="CPU devices per process")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--timeout", type=float, default=600.0)
  parser.add_argument("trainer_flags", nargs="*", help="after --: flags for trainers.lm")
  args = parser.parse_args(argv)
  command = [sys.executable, "-m", "trainers.lm", f"--workdir={args.workdir}", *args.trainer_flags]
  codes = run(command, args.workdir, args.processes, args.devices, timeout=args.timeout)
  for i, code in enumerate(codes):
    print(f"process {i}: exit {code}, log {host_log(args.workdir, i)}")
  return next((c for c in codes if c), 0)


if __name__ == "__main__":
  sys.exit(main())
