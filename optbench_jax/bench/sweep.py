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
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from optbench_jax import atomic_files
from optbench_jax import workdir_lock
from optbench_jax.bench import results_store, sweep_config, trial_process, tuning

SWEEP_SNAPSHOT = "sweep.json"
TRIALS_DIR = "trials"

Launcher = Callable[[str, str], Sequence[str]]


def default_launcher(config_path: str, trial_dir: str) -> list[str]:
  """The trainer command line for one trial."""
  loader = os.path.join(sweep_config.REPO_ROOT, "configs", "from_json.py")
  return [sys.executable, "-m", "trainers.lm", f"--config={loader}:{config_path}",
          f"--workdir={trial_dir}"]


@dataclasses.dataclass(frozen=True)
class Trial:
  optimizer: str
  hparams: dict[str, Any]
  budget_steps: int
  seed: int

  @property
  def trial_id(self) -> str:
    return sweep_config.trial_id(self.optimizer, self.hparams, self.budget_steps, self.seed)


@dataclasses.dataclass
class SweepOutcome:
  """Counts of what one invocation did; ``interrupted`` trials resume on the next run."""
  recorded: dict[str, int] = dataclasses.field(
      default_factory=lambda: {s: 0 for s in results_store.STATUSES})
  skipped: int = 0
  launched: int = 0
  interrupted: list[str] = dataclasses.field(default_factory=list)


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


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Records of a metrics.jsonl; a torn last line (process killed mid-write) is ignored."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def divergence_reason(records: Sequence[Mapping[str, Any]], threshold: float,
                      after_step: int) -> str | None:
  """Why a run counts as diverged, from its training-loss records, or None."""
  for record in records:
    if "loss" not in record:
      continue
    loss = float(record["loss"])
    step = int(record.get("step", 0))
    if not math.isfinite(loss):
      return f"training loss {loss} at step {step}"
    if step >= after_step and loss >= threshold:
      return f"training loss {loss:.4g} >= {threshold} at step {step} (rule applies from {after_step})"
  return None


def _step_time(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
               tokens_per_step: int) -> float:
  """Seconds per step, preferring steady-state throughput (excludes compile time)."""
  if _number(summary.get("tokens_per_s")) > 0:       # the trainer's compile-free mean
    return tokens_per_step / _number(summary["tokens_per_s"])
  rates = [float(r["tokens_per_s"]) for r in records
           if "tokens_per_s" in r and float(r["tokens_per_s"]) > 0]
  rates = rates[1:] if len(rates) > 1 else rates      # the first window includes compilation
  if rates:
    rates.sort()
    return tokens_per_step / rates[len(rates) // 2]
  steps = int(summary.get("steps", 0) or 0)
  wall = _number(summary.get("wall_time_s"))
  return wall / steps if steps > 0 else math.nan


def _number(value: Any) -> float:
  """A summary field as a float; missing or null (JSON None) is NaN."""
  try:
    return math.nan if value is None else float(value)
  except (TypeError, ValueError):
    return math.nan


class SweepRunner:
  """Runs one sweep config in one workdir (see the module docstring)."""

  def __init__(self, sweep: Any, workdir: str, parallel: int = 1,
               launcher: Launcher = default_launcher, retry_failed: bool = True,
               poll_interval_s: float = 0.5, log: Callable[[str], None] = print,
               trial_timeout_s: float = 0.0, executor: Any = None,
               executor_options: Mapping[str, Any] | None = None):
    if parallel is None or parallel < 0 or (parallel == 0 and executor != "ray"):
      raise sweep_config.SweepConfigError(
          f"--parallel must be >= 1 (0: as many as the Ray cluster fits), got {parallel}")
    if workdir is None or not str(workdir).strip():
      raise sweep_config.SweepConfigError("--workdir is empty (an unset shell variable?)")
    self.plain, self.base, self.fingerprint = sweep_config.load(sweep)
    self.workdir = os.path.abspath(workdir)
    if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
      raise sweep_config.SweepConfigError(f"--workdir {self.workdir} is not a directory")
    self._check_data()
    self.executor = make_executor(executor, self.plain, self.workdir, log, executor_options or {})
    self.parallel = parallel or self.executor.capacity
    self.launcher = launcher
    self.retry_failed = retry_failed
    self.poll_interval_s = poll_interval_s
    # Operational, not part of the fingerprint: a hung trial (e.g. a deadlock) is
    # stopped after this many seconds and recorded as failed (retried on rerun).
    self.trial_timeout_s = trial_timeout_s
    self.log = log
    try:
      os.makedirs(self.workdir, exist_ok=True)
      self.lock = workdir_lock.WorkdirLock(self.workdir, "sweep driver", log=log).acquire()
    except BaseException:
      self.executor.close()
      raise
    try:
      self.store = results_store.ResultsStore(
          os.path.join(self.workdir, results_store.STORE_FILENAME), self.fingerprint,
          self.plain["name"])
      atomic_files.write_json(
          os.path.join(self.workdir, SWEEP_SNAPSHOT),
          {"fingerprint": self.fingerprint, "sweep": self.plain,
           "base_config": sweep_config._plain(self.base)}, indent=1, sort_keys=True)
    except BaseException:
      self.lock.release()
      self.executor.close()
      raise

  def _check_data(self) -> None:
    """The trials' corpora open and fit their seq_len, before any trial starts."""
    from optbench_jax.train import preflight  # pylint: disable=import-outside-toplevel
    from optbench_jax.train.config_checks import ConfigError  # pylint: disable=import-outside-toplevel
    seen = set()
    for optimizer in self.plain["optimizers"]:
      config = sweep_config.trial_config(self.plain, self.base, optimizer, {},
                                         self.plain["budgets"][0], self.plain["seeds"][0])
      d = config.data
      key = (d.source, d.path, d.seq_len, d.global_batch_size, d.grad_accum_steps)
      if d.source == "synthetic" and not d.path or key in seen:
        continue   # generated by each trial into its workdir
      seen.add(key)
      if d.source != "synthetic" and (not d.path or not os.path.isdir(d.path)):
        raise sweep_config.SweepConfigError(
            f"data.path {d.path!r} (trials of {optimizer}) is not a directory")
      if d.source != "synthetic" or os.path.exists(os.path.join(d.path, "manifest.json")):
        try:
          preflight.check_data(d.path, config)
        except ConfigError as e:
          raise sweep_config.SweepConfigError(f"trials of {optimizer}: {e}") from None

  # Trial bookkeeping -----------------------------------------------------------------------
  def _trial_dir(self, trial: Trial) -> str:
    return os.path.join(self.workdir, TRIALS_DIR, trial.trial_id)

  def _config(self, trial: Trial):
    return sweep_config.trial_config(self.plain, self.base, trial.optimizer, trial.hparams,
                                     trial.budget_steps, trial.seed)

  def _result(self, trial: Trial, status: str, reason: str, summary: Mapping[str, Any],
              records: Sequence[Mapping[str, Any]]) -> results_store.TrialResult:
    config = self._config(trial)
    per_step = sweep_config.tokens_per_step(config)
    curve = tuple((int(r["step"]), float(r["eval_loss"])) for r in records if "eval_loss" in r)
    final = _number(summary.get("final_eval_loss"))
    if status == results_store.COMPLETED and not math.isfinite(final):
      status, reason = results_store.DIVERGED, f"final eval loss {final}"
    return results_store.TrialResult(
        trial_id=trial.trial_id, optimizer=trial.optimizer, budget_steps=trial.budget_steps,
        seed=trial.seed, hparams=dict(trial.hparams), status=status, reason=reason,
        final_eval_loss=final, eval_curve=curve,
        wall_time_s=_number(summary.get("wall_time_s")),
        steps=int(summary.get("steps", 0) or (records[-1].get("step", 0) if records else 0)),
        tokens=int(summary.get("tokens", 0) or 0), budget_tokens=trial.budget_steps * per_step,
        step_time_s=_step_time(records, summary or {}, per_step),
        params=int(summary.get("params", 0) or 0),
        loss_floor=_number(summary.get("loss_floor")),
        workdir=self._trial_dir(trial), config=config.to_dict())

  def _classify(self, trial: Trial, trial_dir: str, returncode: int | None,
                diverged: str | None, started: float) -> results_store.TrialResult | None:
    """The result of a finished process, or None when it was interrupted (resume later)."""
    records = read_metrics(os.path.join(trial_dir, "metrics.jsonl"))
    summary_path = os.path.join(trial_dir, "summary.json")
    summary, unreadable = {}, None
    # A summary left by an earlier attempt says nothing about this one.
    if os.path.exists(summary_path) and os.path.getmtime(summary_path) >= started - 1:
      try:
        with open(summary_path) as f:
          summary = json.load(f)
      except (OSError, ValueError) as e:   # e.g. an older trainer killed mid-write
        unreadable = f"summary.json unreadable: {e}"
    if diverged:
      return self._result(trial, results_store.DIVERGED, diverged, summary, records)
    status = summary.get("status")
    if status == "completed":
      rule = divergence_reason(records, self.plain["divergence"]["loss_threshold"],
                               sweep_config.divergence_step(self.plain, trial.budget_steps))
      if rule:
        return self._result(trial, results_store.DIVERGED, rule, summary, records)
      return self._result(trial, results_store.COMPLETED, "", summary, records)
    if status == "diverged":
      reason = summary.get("message") or divergence_reason(records, math.inf, 0) or "trainer stopped: diverged"
      return self._result(trial, results_store.DIVERGED, str(reason), summary, records)
    if status == "preempted":
      return None
    tail = trial_process.log_tail(os.path.join(trial_dir, "trial.log"))
    reason = f"exit code {returncode}" + (f"; log tail:\n{tail}" if tail else "")
    for index in range(1, self.plain["hosts_per_trial"]):   # a multi-host trial's other hosts
      line = trial_process.error_line(trial_process.log_tail(
          os.path.join(trial_dir, trial_process.host_log_name(index))))
      if line:
        reason += f"\nhost {index}: {line}"
    if unreadable:
      reason = f"{unreadable}; {reason}"
    elif returncode == 0:
      reason = f"exited 0 without a summary.json ({reason})"
    return self._result(trial, results_store.FAILED, reason, summary, records)

  # Main loop ----------------------------------------------------------------------------------
  def run(self) -> SweepOutcome:
    outcome = SweepOutcome()
    plain = self.plain
    tuners = {}
    for optimizer, spec in plain["optimizers"].items():
      for budget in plain["tune_budgets"]:
        tuners[(optimizer, budget)] = tuning.make_tuner(
            plain["strategy"], spec["grid"], spec["baseline"], plain["threshold"],
            plain["trial_budget"] or None, plain["edge_extension"])
    replicated: set[tuple[str, int]] = set()
    waiting: dict[str, list[Callable[[float], None]]] = {}   # trial id -> result callbacks
    queue: list[Trial] = []
    running: dict[str, Any] = {}   # trial id -> the executor's handle

    def submit(trial: Trial, callback: Callable[[float], None]) -> bool:
      """Returns True if the trial's result was already known (callback called)."""
      tid = trial.trial_id
      if tid in waiting:
        waiting[tid].append(callback)
        return False
      final = self.store.final_result(tid)
      if final is None:
        final = self._recover_finished(trial)
      if final is None and not self.retry_failed:
        failures = self.store.attempts(tid)
        final = failures[-1] if failures else None
      if final is not None:
        outcome.skipped += 1
        callback(final.objective)
        return True
      waiting[tid] = [callback]
      queue.append(trial)
      return False

    def gather() -> None:
      """Collects proposals until every tuner waits on a trial that must run."""
      progress = True
      while progress:
        progress = False
        for (optimizer, budget), tuner in tuners.items():
          batch = tuner.propose()
          for point in batch:
            trial = Trial(optimizer, point, budget, plain["seeds"][0])
            progress |= submit(trial, lambda loss, t=tuner, p=point: t.observe(p, loss))
          if not batch and tuner.done and (optimizer, budget) not in replicated:
            replicated.add((optimizer, budget))
            best, best_loss = tuner.best
            if math.isfinite(best_loss):
              for seed in plain["seeds"][1:]:
                submit(Trial(optimizer, best, budget, seed), lambda loss: None)
              for other in plain["budgets"]:     # untuned budgets reuse this best config
                if other not in plain["tune_budgets"] and \
                   sweep_config.transfer_source(plain, other) == budget:
                  for seed in plain["seeds"]:
                    submit(Trial(optimizer, best, other, seed), lambda loss: None)

    gather()
    try:
      self._loop(outcome, queue, running, waiting, gather)
    finally:
      for run in running.values():     # interrupted sweep: trials checkpoint and stop
        run.stop()
        run.close()
    return outcome

  def _loop(self, outcome, queue, running, waiting, gather) -> None:
    while queue or running:
      while queue and len(running) < self.parallel:
        trial = queue.pop(0)
        rejected = self._preflight(trial)
        if rejected is not None:     # the trainer would refuse it: record, never launch
          self.store.record(rejected)
          outcome.recorded[rejected.status] += 1
          self.log(f"[sweep] {trial.trial_id}: not launched ({rejected.reason})")
          for callback in waiting.pop(trial.trial_id, []):
            callback(rejected.objective)
          continue
        if not self._wait_for_live_copy(trial):
          outcome.interrupted.append(trial.trial_id)
          waiting.pop(trial.trial_id, None)
          continue
        running[trial.trial_id] = self._launch(trial)
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
                                read_metrics(os.path.join(run.trial_dir, "metrics.jsonl")))
        if result is None:
          outcome.interrupted.append(tid)
          self.log(f"[sweep] {tid}: interrupted (preempted); rerun the sweep to resume it")
          waiting.pop(tid, None)
          continue
        self.store.record(result)
        outcome.recorded[result.status] += 1
        self.log(f"[sweep] {tid}: {result.status}"
                 + (f" final_eval_loss={result.final_eval_loss:.4f}"
                    if result.status == results_store.COMPLETED else
                    f" ({self._short_reason(result)})"))
        for callback in waiting.pop(tid, []):
          callback(result.objective)
      gather()

  def _short_reason(self, result: results_store.TrialResult) -> str:
    """The console form of a failure: the trainer's own error line, not the command line."""
    if result.status == results_store.FAILED:
      line = trial_process.error_line(
          trial_process.log_tail(os.path.join(result.workdir, "trial.log")))
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
    if not os.path.exists(os.path.join(trial_dir, "summary.json")):
      return None
    result = self._classify(trial, trial_dir, None, None, started=0.0)
    if result is None or result.status == results_store.FAILED:
      return None
    self.store.record(result)
    return result

  def _preflight(self, trial: Trial) -> results_store.TrialResult | None:
    """A failed result if the trainer's own checks reject the trial's config, else None."""
    try:
      sweep_config.preflight(self._config(trial), trial.trial_id, self.plain["hosts_per_trial"])
    except sweep_config.SweepConfigError as e:
      return self._result(trial, results_store.FAILED, str(e), {}, [])
    return None

  def _launch(self, trial: Trial) -> Any:
    trial_dir = self._trial_dir(trial)
    os.makedirs(trial_dir, exist_ok=True)
    config_path = os.path.join(trial_dir, "config.json")
    with open(config_path, "w") as f:
      json.dump(self._config(trial).to_dict(), f, indent=1, sort_keys=True)
    self.log(f"[sweep] launching {trial.trial_id} {trial.hparams}")
    threshold = self.plain["divergence"]["loss_threshold"]
    after_step = sweep_config.divergence_step(self.plain, trial.budget_steps)
    return self.executor.launch(
        trial, trial_dir, self.launcher(config_path, trial_dir),
        lambda records: divergence_reason(records, threshold, after_step))

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
