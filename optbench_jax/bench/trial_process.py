"""One sweep trial as a child process of the sweep driver: launch, watch, stop, and its tie to the driver.

A trial is a ``trainers.lm`` process in its own session (stopping it stops
anything it started), its output appended to ``<trial>/trial.log``, its
``metrics.jsonl`` read incrementally so a divergence rule can stop it early.
For a ``gs://`` sweep the trial's workdir is in the bucket while its
``trial.log`` is written on the driver's host (``log_dir``, the sweep's local
cache: a process's output cannot stream into an object) and uploaded next to
the trial's other files when the process ends; its ``metrics.jsonl`` is polled
with ranged reads at most every ``REMOTE_POLL_S``.

Tie to the driver (issue 14). A trial must neither outlive a dead driver nor
run twice. Design:

* every trial is started with ``PR_SET_PDEATHSIG = SIGTERM`` (Linux): when the
  driver dies, even by SIGKILL, the kernel sends its trials SIGTERM, and the
  trainer checkpoints and exits ``preempted`` -- the rerun resumes it;
* where that is unavailable (other OSes) or a trial survives its driver anyway,
  the trial's own workdir lock (``optbench_jax.workdir_lock``) stops a second
  copy: before launching, the driver waits up to ``LIVE_TRIAL_WAIT_S`` for a
  live holder to exit, then leaves the trial interrupted rather than start it
  twice (and the trainer itself would refuse the locked workdir).

Re-attaching a new driver to a live trial was not chosen: the process would not
be the new driver's child, so it could not wait for its exit status, nor stop it
on divergence or a timeout with the same guarantees.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from optbench_jax import storage
from optbench_jax import workdir_lock
from optbench_jax.bench import sweep_config

LOG_TAIL_LINES = 15
STOP_GRACE_S = 30.0        # SIGTERM lets a trainer checkpoint; SIGKILL after this long
LIVE_TRIAL_WAIT_S = STOP_GRACE_S + 30.0   # for a trial of a dead driver to checkpoint and exit
_PR_SET_PDEATHSIG = 1      # <linux/prctl.h>
REMOTE_POLL_S = 5.0        # a gs:// trial's metrics.jsonl is read at most this often


def log_tail(path: str) -> str:
  """The last lines of a trial.log (always a local file, see the module docstring)."""
  if not os.path.exists(path):
    return ""
  with open(path, errors="replace") as f:
    lines = f.readlines()
  return "".join(lines[-LOG_TAIL_LINES:]).strip()


def error_line(tail: str) -> str:
  """The trainer's ``error: ...`` line in a log tail, else its last line."""
  lines = [l.strip() for l in tail.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error:")]
  return errors[-1] if errors else (lines[-1] if lines else "")


def die_with_parent() -> Callable[[], None] | None:
  """A ``preexec_fn``: the child gets SIGTERM when the calling thread's process dies.

  Linux only (None elsewhere). The death signal fires when the *thread* that
  forked exits, so trials are launched from the driver's main thread.
  """
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None, use_errno=True)   # loaded in the parent, before fork
  except OSError:
    return None
  parent = os.getpid()

  def preexec():
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:   # the driver died before prctl took effect
      os.kill(os.getpid(), signal.SIGTERM)
  return preexec


def wait_until_unlocked(trial_dir: str, poll_s: float) -> dict[str, Any] | None:
  """Waits up to ``LIVE_TRIAL_WAIT_S`` for the process holding ``trial_dir`` to exit;
  returns the holder still there after that, or None."""
  deadline = time.time() + LIVE_TRIAL_WAIT_S
  holder = workdir_lock.read_holder(trial_dir)
  while holder is not None and time.time() < deadline:
    time.sleep(poll_s)
    holder = workdir_lock.read_holder(trial_dir)
  return holder


class TrialProcess:
  """One launched trial process and its incremental view of metrics.jsonl.

  ``divergence(records)`` returns why the new records make the trial diverged
  (it is then stopped), or None.
  """

  def __init__(self, trial: Any, trial_dir: str, argv: Sequence[str],
               divergence: Callable[[list[dict[str, Any]]], str | None],
               log_dir: str | None = None):
    self.trial = trial
    self.trial_dir = trial_dir
    self.divergence = divergence
    self.started = time.time()
    self.diverged: str | None = None
    self.timed_out: str | None = None
    self.log_path = os.path.join(log_dir or trial_dir, "trial.log")
    self._polled_at = 0.0
    self._log = open(self.log_path, "a")
    self._log.write(f"\n=== attempt at {time.ctime()}: {' '.join(argv)}\n")
    self._log.flush()
    env = dict(os.environ)
    # The repository, then the driver's working directory: a user's optimizer named by
    # an import path ("my_module:factory") imports in the trial as it did in the driver.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (sweep_config.REPO_ROOT, os.getcwd(), env.get("PYTHONPATH", "")) if p)
    self.process = subprocess.Popen(list(argv), cwd=sweep_config.REPO_ROOT, env=env,
                                    stdout=self._log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent())
    self._metrics_offset = 0

  def check_divergence(self) -> None:
    path = storage.join(self.trial_dir, "metrics.jsonl")
    if storage.is_remote(path):
      if time.monotonic() - self._polled_at < REMOTE_POLL_S:
        return
      self._polled_at = time.monotonic()
    if self.diverged or not storage.exists(path):
      return
    try:
      raw = storage.read_bytes(path, start=self._metrics_offset)
    except (FileNotFoundError, ValueError):   # rewritten shorter meanwhile (a resume)
      return
    complete = raw[:raw.rfind(b"\n") + 1]        # only whole lines
    self._metrics_offset += len(complete)
    complete = complete.decode("utf-8", errors="replace")
    records = []
    for line in complete.splitlines():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
    reason = self.divergence(records)
    if reason:
      self.diverged = reason
      self.stop()

  def stop(self) -> None:
    if self.process.poll() is None:
      try:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=STOP_GRACE_S)
      except subprocess.TimeoutExpired:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
      except ProcessLookupError:
        pass

  def close(self) -> None:
    self._log.close()
    if storage.is_remote(self.trial_dir):
      storage.upload(self.log_path, storage.join(self.trial_dir, "trial.log"))
