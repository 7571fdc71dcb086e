"""One sweep trial as a child process of the sweep driver: launch, watch, stop, and its tie to the driver.

A trial is a ``trainers.lm`` process in its own session (stopping it stops
anything it started), its output appended to ``<trial>/trial.log``, its
``metrics.jsonl`` read incrementally so a divergence rule can stop it early.
For a ``gs://`` sweep the trial's workdir is in the bucket while its
``trial.log`` is written on the driver's host (``log_dir``, the sweep's local
cache: a process's output cannot stream into an object) and uploaded next to
the trial's other files when the process ends; its ``metrics.jsonl`` is polled
with ranged reads at most every ``REMOTE_POLL_S``.

Tie to the driver. A trial must neither outlive a dead driver nor
run twice. Design:

* every trial is started with ``PR_SET_PDEATHSIG = SIGTERM`` (Linux, set by
  ``optbench_jax.parent_death`` in the child, not by a ``preexec_fn``: no Python
  runs in a forked copy of the multithreaded driver): when the
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

import os
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

from optbench_jax import process_group
from optbench_jax import parent_death
from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax import workdir_lock
from optbench_jax.bench import sweep_config

LOG_TAIL_LINES = 15
STOP_GRACE_S = 30.0        # SIGTERM lets a trainer checkpoint; SIGKILL after this long
LIVE_TRIAL_WAIT_S = STOP_GRACE_S + 30.0   # for a trial of a dead driver to checkpoint and exit
BROKEN_GRACE_S = 120.0     # a multi-host trial with a dead process: stop the rest after this
REMOTE_POLL_S = 5.0        # a gs:// trial's metrics.jsonl is read at most this often


def log_tail(path: str) -> str:
  """The last ``LOG_TAIL_LINES`` lines of a trial's log (a local file, or its gs:// copy), or ""."""
  if not storage.exists(path):
    return ""
  lines = storage.read_bytes(path).decode("utf-8", errors="replace").splitlines()
  return "\n".join(lines[-LOG_TAIL_LINES:]).strip()


def error_line(tail: str) -> str:
  """The trainer's ``error: ...`` line in a log tail, else its last line."""
  lines = [l.strip() for l in tail.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error:")]
  return errors[-1] if errors else (lines[-1] if lines else "")


def wait_until_unlocked(trial_dir: str, poll_s: float) -> dict[str, Any] | None:
  """Waits up to ``LIVE_TRIAL_WAIT_S`` for the process holding ``trial_dir`` to exit;
  returns the holder still there after that, or None."""
  deadline = time.time() + LIVE_TRIAL_WAIT_S
  holder = workdir_lock.read_holder(trial_dir)
  while holder is not None and time.time() < deadline:
    time.sleep(poll_s)
    holder = workdir_lock.read_holder(trial_dir)
  return holder


def host_log_name(index: int) -> str:
  """The log of a trial's process ``index``: ``trial.log`` for process 0."""
  return "trial.log" if index == 0 else f"trial.host{index}.log"


def local_devices_per_host(hosts: int, env: Mapping[str, str] | None = None) -> int | None:
  """CPU devices each of a trial's ``hosts`` local processes gets (None for one process).

  Several processes of one trial on this machine split its forced CPU device
  count (``--xla_force_host_platform_device_count`` in XLA_FLAGS); raises
  SweepConfigError when there is none to split, or it does not divide.
  """
  if hosts == 1:
    return None
  forced = process_group.forced_device_count(env)
  if forced is None:
    raise sweep_config.SweepConfigError(
        f"hosts_per_trial={hosts}: the local executor starts a trial's processes on this "
        "machine and splits its CPU devices between them, but XLA_FLAGS sets no "
        "--xla_force_host_platform_device_count; on GPU/TPU hosts run the sweep with "
        "--executor=ray (one process per node)")
  if forced % hosts:
    raise sweep_config.SweepConfigError(
        f"hosts_per_trial={hosts} does not divide this machine's {forced} CPU devices")
  return forced // hosts


def trial_env() -> dict[str, str]:
  """The driver's environment, with the repository and the driver's working directory first on
  PYTHONPATH: a user's optimizer named by an import path ("my_module:factory") imports in the
  trial as it did in the driver."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (sweep_config.REPO_ROOT, os.getcwd(), env.get("PYTHONPATH", "")) if p)
  return env


class TrialProcess:
  """One launched trial (``hosts`` processes forming one job) and its view of metrics.jsonl.

  ``divergence(records)`` returns why the new records make the trial diverged
  (it is then stopped), or None. With ``hosts > 1`` the trial is a multi-host
  job started by ``process_group.ProcessGroup`` (process i logs to
  ``host_log_name(i)``); it is one trial: one exit status (the first non-zero),
  one divergence watch on process 0's metrics, one stop for all processes, and a
  member that dies takes the others down after ``BROKEN_GRACE_S``.

  ``process_ids``/``coordinator``: only these processes of the ``hosts``-process
  job run here, joining the job at ``coordinator`` (a cluster executor runs one
  TrialProcess per node, ``bench.ray_supervisor``); default: all of them, here.
  """

  def __init__(self, trial: Any, trial_dir: str, argv: Sequence[str],
               divergence: Callable[[list[dict[str, Any]]], str | None], hosts: int = 1,
               local_devices: int | None = None, log_dir: str | None = None,
               process_ids: Sequence[int] | None = None, coordinator: str | None = None):
    self.trial = trial
    self.trial_dir = trial_dir
    self.divergence = divergence
    self.started = time.time()
    self.diverged: str | None = None
    self.timed_out: str | None = None
    # Logs are local files (GCS has no append): with a gs:// ``trial_dir`` they are written
    # in ``log_dir`` (default: a fresh local directory) and ``close`` uploads them.
    if log_dir is None and storage.is_remote(trial_dir):
      log_dir = tempfile.mkdtemp(prefix="optbench-trial-logs-")
    self.log_dir = log_dir or trial_dir
    self._polled_at = 0.0
    ids = list(range(hosts)) if process_ids is None else list(process_ids)
    self._log_ids = ids
    self._logs = [open(os.path.join(self.log_dir, host_log_name(i)), "a") for i in ids]
    for log in self._logs:
      log.write(f"\n=== attempt at {time.ctime()}: {' '.join(argv)}\n")
      log.flush()
    self.group = process_group.ProcessGroup(
        parent_death.wrap(list(argv)), hosts, local_device_count=local_devices, env=trial_env(),
        cwd=sweep_config.REPO_ROOT, outputs=self._logs,
        coordinator=coordinator, process_ids=ids)
    self._metrics_offset = 0

  def poll(self) -> int | None:
    """None while the trial runs; then its exit status. Stops a broken multi-host trial."""
    self.group.stop_if_broken(BROKEN_GRACE_S)
    return self.group.poll()

  def check_divergence(self) -> None:
    path = workdir_files.path(self.trial_dir, workdir_files.METRICS)
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
    records = workdir_files.parse_metrics(complete.decode("utf-8", errors="replace"))
    reason = self.divergence(records)
    if reason:
      self.diverged = reason
      self.stop()

  def stop(self) -> None:
    """SIGTERM to every process (the trainer checkpoints), SIGKILL after ``STOP_GRACE_S``."""
    self.group.stop(grace_s=STOP_GRACE_S)

  def settle(self) -> None:
    """Nothing to do: a local trial is never between attempts."""

  def close(self) -> None:
    for index, log in zip(self._log_ids, self._logs):
      log.close()
      if storage.is_remote(self.trial_dir):
        storage.upload(os.path.join(self.log_dir, host_log_name(index)),
                       storage.join(self.trial_dir, host_log_name(index)))


class ExecutorGone(RuntimeError):
  """The executor can run no trial any more (a cluster whose head died): raised from a
  handle's ``poll`` or from ``launch``. The runner stops at once, counts every running trial
  as interrupted (each resumes from its checkpoint on rerun) and leaves the message to its
  caller; the handles' ``stop``/``close`` then make no call that would wait on the lost
  cluster."""


class LocalExecutor:
  """Runs trials as processes of this machine: ``launch`` returns a :class:`TrialProcess`.

  The seam a cluster executor replaces: ``launch(trial, trial_dir, argv, divergence,
  log_dir=None)`` returns a handle with ``trial``, ``trial_dir``, ``started``,
  ``diverged``, ``timed_out``, ``check_divergence()``, ``poll()``, ``stop()``,
  ``close()`` and ``settle()`` (called once the runner has recorded the trial's result or
  counted it interrupted); ``log_dir`` is where the trial's logs are written (local) when
  ``trial_dir`` is a gs:// URL.
  """

  def __init__(self, hosts_per_trial: int = 1):
    self.hosts_per_trial = hosts_per_trial
    self.local_devices = local_devices_per_host(hosts_per_trial)

  def launch(self, trial: Any, trial_dir: str, argv: Sequence[str],
             divergence: Callable[[list[dict[str, Any]]], str | None],
             log_dir: str | None = None) -> TrialProcess:
    return TrialProcess(trial, trial_dir, argv, divergence, hosts=self.hosts_per_trial,
                        local_devices=self.local_devices, log_dir=log_dir)

  def close(self) -> None:
    pass
