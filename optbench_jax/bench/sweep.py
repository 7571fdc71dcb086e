"""The sweep runner: tuners propose trials, trials run as trainer processes, results are stored.

Every trial is an ordinary trainer run in its own workdir
(``<workdir>/trials/<trial id>/``), launched as

    python -m trainers.lm --config=configs/from_json.py:<trial>/config.json --workdir=<trial>

so on a pod each trial is a normal multi-host run, and locally ``parallel`` of
them run side by side as independent processes. The runner:

* validates the sweep and opens the results store *before* any trial starts
  (a store of another sweep or a newer schema raises); the validation runs the
  trainer's own checks (``train.check``) on the grid, and every trial proposed
  later is checked the same way right before launch (a rejected one is recorded
  ``failed`` with the trainer's message, never launched);
* asks every (optimizer, budget) tuner for trials (tuning runs on ``seeds[0]``;
  a finished tuner's best point is then re-run on the remaining seeds);
* skips trials the store already holds as completed or diverged, and records
  (without re-running) a trial whose workdir already has a final summary;
* relaunches interrupted trials in their old workdir, so the trainer resumes
  from its checkpoint;
* watches each running trial's ``metrics.jsonl`` and stops it as diverged when
  the loss is NaN/Inf, or >= the threshold after the rule's step (Wen et al.
  2025: loss >= 6 after 2000 steps);
* records a crashed trial as ``failed`` with the tail of its log and continues.

The driver holds its workdir's lock (``optbench_jax.workdir_lock``), so a
second driver on the same sweep is refused; how trials die with their driver
and are never started twice is in ``trial_process``.

The files of the sweep directory, and the results store's mirror in a bucket
for a ``gs://`` sweep, are ``sweep_dir``'s; what a finished trial amounts to is
``trial_outcome``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax import workdir_lock
from optbench_jax.bench import (results_store, sweep_config, sweep_dir, sweep_program,
                                sweep_progress, trial_outcome, trial_plan, trial_preflight,
                                trial_process)


Launcher = Callable[[str, str], Sequence[str]]


def default_launcher(config_path: str, trial_dir: str, compilation_cache: str = "") -> list[str]:
  """The trainer command line for one trial (``compilation_cache``: a local directory the
  trials share for JAX's persistent compilation cache; empty: none)."""
  loader = os.path.join(sweep_config.REPO_ROOT, "configs", "from_json.py")
  return [sys.executable, "-m", "trainers.lm", f"--config={loader}:{config_path}",
          f"--workdir={trial_dir}"] + (
              [f"--compilation_cache={compilation_cache}"] if compilation_cache else [])


Trial = trial_plan.Trial   # re-exported: the unit a sweep runs


@dataclasses.dataclass
class SweepOutcome:
  """Counts of what one invocation did; ``interrupted`` trials resume on the next run.
  ``finished``: the trials recorded by this invocation; ``stopped``: why it stopped before
  the sweep was done (the executor gone, e.g. a Ray cluster whose head died), else empty."""
  recorded: dict[str, int] = dataclasses.field(
      default_factory=lambda: {s: 0 for s in results_store.STATUSES})
  skipped: int = 0
  launched: int = 0
  interrupted: list[str] = dataclasses.field(default_factory=list)
  finished: list[str] = dataclasses.field(default_factory=list)
  stopped: str = ""


def make_executor(executor: Any, plain: Mapping[str, Any], workdir: str,
                  log: Callable[[str], None], options: Mapping[str, Any]) -> Any:
  """The trial executor: "local" (default: processes of this machine), "ray" (a Ray
  cluster, ``bench.ray_executor``; ``options`` go to it), or an executor object."""
  if executor is None or executor == "local":
    return trial_process.LocalExecutor(plain["hosts_per_trial"])
  if executor == "ray":
    from optbench_jax.bench import ray_executor  # pylint: disable=import-outside-toplevel
    return ray_executor.RayExecutor.for_sweep(plain, workdir, log=log, **options)
  if isinstance(executor, str):
    raise sweep_config.SweepConfigError(f"--executor must be 'local' or 'ray', got {executor!r}")
  return executor


class SweepRunner:
  """Runs one sweep config in one workdir (see the module docstring)."""

  def __init__(self, sweep: Any, workdir: str, parallel: int = 1,
               launcher: Launcher = default_launcher, retry_failed: bool = True,
               poll_interval_s: float = 0.5, log: Callable[[str], None] = print,
               trial_timeout_s: float = 0.0, executor: Any = None,
               progress: sweep_progress.SweepProgress | None = None,
               executor_options: Mapping[str, Any] | None = None,
               compilation_cache: bool = True):
    if parallel is None or parallel < 0 or (parallel == 0 and executor != "ray"):
      raise sweep_config.SweepConfigError(
          f"--parallel must be >= 1 (0: as many as the Ray cluster fits), got {parallel}")
    if workdir is None or not str(workdir).strip():
      raise sweep_config.SweepConfigError("--workdir is empty (an unset shell variable?)")
    self.program = (sweep if hasattr(sweep, "plan") and hasattr(sweep, "scales")
                    else sweep_program.SweepProgram(sweep))
    self.checker = trial_preflight.TrialChecker()
    for _, plain, base in self.program.scales():
      self.checker.check_grid(plain, base)
    self.dir = sweep_dir.SweepDirectory(workdir)
    self.workdir = self.dir.workdir
    try:
      self.dir.check()
    except ValueError as e:
      raise sweep_config.SweepConfigError(str(e)) from None
    self.log = log
    self._check_data()
    self.executor = make_executor(executor, self.program.operational, self.workdir, log,
                                  executor_options or {})
    self.parallel = parallel or self.executor.capacity
    self.progress = progress   # default: a SweepProgress on stdout (live on a terminal)
    if launcher is default_launcher and compilation_cache:
      launcher = functools.partial(default_launcher,
                                   compilation_cache=self.dir.compilation_cache_dir())
    self.launcher = launcher
    self.retry_failed = retry_failed
    self._held: dict[str, float] = {}   # trial id -> when to ask the program again
    self.poll_interval_s = poll_interval_s
    # Operational, not part of the fingerprint: a hung trial (e.g. a deadlock) is
    # stopped after this many seconds and recorded as failed (retried on rerun).
    self.trial_timeout_s = trial_timeout_s
    self.log = log
    try:
      self.dir.makedirs()
      self.lock = workdir_lock.for_directory(self.workdir, "sweep driver", log=log).acquire()
    except BaseException:
      self.executor.close()
      raise
    try:
      self.store = results_store.ResultsStore(self.dir.pull_store(), self.program.fingerprint,
                                              self.program.name)
      self.dir.push_store(self.store.path)
      self.dir.write_snapshot(self.program.snapshot())
    except BaseException:
      self.lock.release()
      self.executor.close()
      raise

  def _check_data(self) -> None:
    """The trials' corpora open and fit their seq_len, before any trial starts."""
    from optbench_jax.train import preflight  # pylint: disable=import-outside-toplevel
    from optbench_jax.config import ConfigError  # pylint: disable=import-outside-toplevel
    seen = set()
    for scale, plain, base in self.program.scales():
      for optimizer in plain["optimizers"]:
        config = sweep_config.trial_config(plain, base, optimizer, {}, plain["budgets"][0],
                                           plain["seeds"][0])
        d = config.data
        key = (d.source, d.path, d.seq_len, d.global_batch_size, d.grad_accum_steps)
        if key in seen:   # (a synthetic corpus without a path: generated by each trial)
          continue
        seen.add(key)
        try:
          preflight.check_data_source(config, log=self.log)
        except (ConfigError, ValueError) as e:
          where = f"{scale}: " if scale else ""
          raise sweep_config.SweepConfigError(f"{where}trials of {optimizer}: {e}") from None

  # Trial bookkeeping -----------------------------------------------------------------------
  def _trial_dir(self, trial: Trial) -> str:
    return self.dir.trial_dir(trial.trial_id)

  def _log_path(self, trial_id: str, process: int) -> str:
    return self.dir.log_path(trial_id, trial_process.host_log_name(process))

  def _record(self, result: results_store.TrialResult) -> None:
    self.store.record(result)
    self.dir.push_store(self.store.path)

  def _config(self, trial: Trial):
    return self.program.config(trial)

  def _result(self, trial: Trial, status: str, reason: str, summary: Mapping[str, Any],
              records: Sequence[Mapping[str, Any]]) -> results_store.TrialResult:
    return trial_outcome.result(trial, status, reason, summary, records, self._config(trial),
                                self._trial_dir(trial))

  def _classify(self, trial: Trial, trial_dir: str, returncode: int | None,
                diverged: str | None, started: float) -> results_store.TrialResult | None:
    """The result of a finished process, or None when it was interrupted (``trial_outcome``)."""
    return trial_outcome.classify(trial, trial_dir, self._config(trial),
                                  self.program.sweep_of(trial), returncode,
                                  diverged, started,
                                  lambda host: self._log_path(trial.trial_id, host))

  # Main loop ----------------------------------------------------------------------------------
  def run(self) -> SweepOutcome:
    outcome = SweepOutcome()
    plan = self.program.plan()
    running: dict[str, Any] = {}   # trial id -> the executor's handle

    def known(trial: Trial) -> float | None:
      """The objective of a result already held (a rerun skips the trial), else None."""
      final = self.store.final_result(trial.trial_id)
      if final is None:
        final = self._recover_finished(trial)
      if final is None and not self.retry_failed:
        failures = self.store.attempts(trial.trial_id)
        final = failures[-1] if failures else None
      if final is None:
        return None
      outcome.skipped += 1
      return final.objective

    queue = plan.propose(known)
    progress = self.progress or sweep_progress.SweepProgress(self.parallel, log=self.log)
    try:
      with progress:
        self._loop(outcome, queue, running, plan, known, progress)
    except trial_process.ExecutorGone as e:
      # Nothing more can run: the running trials are interrupted (they resume from their
      # checkpoints on rerun) and the caller reports what is saved and what to rerun.
      outcome.stopped = str(e)
      outcome.interrupted.extend(running)
      self.log(f"[sweep] error: {e}; the sweep stopped")
    finally:
      for run in running.values():     # interrupted sweep: trials checkpoint and stop
        run.stop()
        run.close()
        run.settle()
    return outcome

  def _loop(self, outcome, queue, running, plan, known, progress) -> None:
    def show():
      recorded = outcome.recorded
      done = outcome.skipped + sum(recorded.values())
      progress.update(sweep_progress.Counts(
          done=done, known=done + len(running) + len(queue), running=len(running),
          diverged=recorded[results_store.DIVERGED], failed=recorded[results_store.FAILED]))

    while queue or running:
      show()
      while queue and len(running) < self.parallel:
        picked = self._next(queue, running)
        if picked is None:     # every queued trial waits for another to get somewhere
          break
        trial, config = picked
        rejected = self._preflight(trial)
        if rejected is not None:     # the trainer would refuse it: record, never launch
          self._record(rejected)
          outcome.recorded[rejected.status] += 1
          self.log(f"[sweep] {trial.trial_id}: not launched ({rejected.reason})")
          plan.observe(trial.trial_id, rejected.objective)
          continue
        if not self._wait_for_live_copy(trial):
          outcome.interrupted.append(trial.trial_id)
          plan.forget(trial.trial_id)
          continue
        running[trial.trial_id] = self._launch(trial, config)
        outcome.launched += 1
      time.sleep(self.poll_interval_s)
      for tid, run in list(running.items()):
        run.check_divergence()
        if (self.trial_timeout_s and not run.timed_out and
            time.time() - run.started > self.trial_timeout_s):
          run.timed_out = f"no result after {self.trial_timeout_s:g} s: stopped (hung or too slow)"
          run.stop()
        returncode = run.poll()
        if returncode is None:
          continue
        del running[tid]
        run.close()
        result = self._classify(run.trial, run.trial_dir, returncode, run.diverged, run.started)
        if run.timed_out and (result is None or result.status != results_store.DIVERGED):
          result = self._result(run.trial, results_store.FAILED, run.timed_out, {},
                                workdir_files.read_metrics(run.trial_dir))
        if result is None:
          outcome.interrupted.append(tid)
          run.settle()
          self.log(f"[sweep] {tid}: interrupted (preempted); rerun the sweep to resume it")
          plan.forget(tid)
          continue
        self._record(result)
        run.settle()
        outcome.recorded[result.status] += 1
        outcome.finished.append(tid)
        progress.trial_finished(time.time() - run.started)
        self.log(f"[sweep] {tid}: {result.status}"
                 + (f" final_eval_loss={result.final_eval_loss:.4f}"
                    if result.status == results_store.COMPLETED else
                    f" ({self._short_reason(result)})"))
        plan.observe(tid, result.objective)
      queue.extend(plan.propose(known))
    show()

  def _short_reason(self, result: results_store.TrialResult) -> str:
    """The console form of a failure: the trainer's own error line, not the command line."""
    if result.status == results_store.FAILED:
      line = trial_process.error_line(
          trial_process.log_tail(self._log_path(result.trial_id, 0)))
      head = result.reason.splitlines()[0] if result.reason else ""
      return f"{head}: {line}"[:300] if line else head[:300]
    return result.reason[:300]

  def _wait_for_live_copy(self, trial: Trial) -> bool:
    """False when the trial still runs in another process (e.g. of a dead driver) after a wait."""
    trial_dir = self._trial_dir(trial)
    holder = workdir_lock.read_holder(trial_dir)
    if holder is None:
      return True
    self.log(f"[sweep] {trial.trial_id}: still running as pid {holder.get('pid')} "
             "(left by an earlier driver); waiting for it to exit")
    holder = trial_process.wait_until_unlocked(trial_dir, min(1.0, self.poll_interval_s * 10))
    if holder is not None:
      self.log(f"[sweep] {trial.trial_id}: pid {holder.get('pid')} still holds {trial_dir}; "
               "not started twice: rerun the sweep once it has exited")
      return False
    return True

  def _recover_finished(self, trial: Trial) -> results_store.TrialResult | None:
    """Records a trial whose process finished after the last sweep stopped watching it."""
    trial_dir = self._trial_dir(trial)
    if not storage.exists(workdir_files.path(trial_dir, workdir_files.SUMMARY)):
      return None
    result = self._classify(trial, trial_dir, None, None, started=0.0)
    if result is None or result.status == results_store.FAILED:
      return None
    self._record(result)
    return result

  def _preflight(self, trial: Trial) -> results_store.TrialResult | None:
    """A failed result if the trainer's own checks reject the trial's config, else None."""
    try:
      self.checker.check(self._config(trial), trial.trial_id,
                         self.program.operational["hosts_per_trial"])
    except sweep_config.SweepConfigError as e:
      return self._result(trial, results_store.FAILED, str(e), {}, [])
    return None

  # A trial the program holds back is looked at again after this long (its reasons are other
  # trials' checkpoints: a listing, remote for a bucket).
  HOLD_RECHECK_S = 2.0

  def _next(self, queue: list[Trial], running: Mapping[str, Any]):
    """(the next trial to launch, its config), taken off ``queue``; None when the program
    holds every queued trial back (a study's shorter budget waiting for a longer run)."""
    queue[:] = self.program.order(queue)
    queued = {t.trial_id for t in queue}
    active = lambda trial_id: trial_id in running or trial_id in queued
    now = time.monotonic()
    for index, trial in enumerate(queue):
      if self._held.get(trial.trial_id, 0.0) > now:
        continue
      changes = self.program.prepare(trial, active, self.dir.trial_dir)
      if changes is None:
        self._held[trial.trial_id] = now + self.HOLD_RECHECK_S
        continue
      self._held.pop(trial.trial_id, None)
      del queue[index]
      config = self._config(trial)
      for key, value in changes.items():
        sweep_config._set_dotted(config, key, value, "launch")   # pylint: disable=protected-access
      return trial, config
    return None

  def _launch(self, trial: Trial, config) -> Any:
    trial_dir = self._trial_dir(trial)
    local_dir = self.dir.local_trial_dir(trial.trial_id)
    storage.makedirs(trial_dir)
    os.makedirs(local_dir, exist_ok=True)
    config_path = os.path.join(local_dir, "config.json")   # always local: the launcher reads it
    with open(config_path, "w") as f:
      json.dump(config.to_dict(), f, indent=1, sort_keys=True)
    self.dir.upload_trial_file(trial.trial_id, config_path)
    self.log(f"[sweep] launching {trial.trial_id} {trial.hparams}")
    return self.executor.launch(
        trial, trial_dir, self.launcher(config_path, trial_dir),
        trial_outcome.divergence_rule(self.program.sweep_of(trial), trial.budget_steps),
        log_dir=local_dir)

  def close(self) -> None:
    self.executor.close()
    self.store.close()
    self.lock.release()


def run_sweep(sweep: Any, workdir: str, parallel: int = 1, **kwargs) -> SweepOutcome:
  """Validates, then runs (or resumes) ``sweep`` in ``workdir``; see :class:`SweepRunner`."""
  runner = SweepRunner(sweep, workdir, parallel, **kwargs)
  try:
    return runner.run()
  finally:
    runner.close()
