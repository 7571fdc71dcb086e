"""What a finished trial process amounts to: completed, diverged, failed, or interrupted.

:func:`classify` reads the trial's work directory (``metrics.jsonl`` and the
``summary.json`` of this attempt) and its logs:

* ``completed`` when the trainer completed and the sweep's divergence rule
  (``divergence.py``, the sweep's threshold from its chosen step) never fired;
  a completed run whose final eval loss is not finite is ``diverged``;
* ``diverged`` when the supervisor stopped it by that rule, or the trainer
  stopped it as diverged;
* ``None`` (interrupted: resume later) when the trainer was preempted, or
  exited because its ``gs://`` storage stopped answering (``cli_errors.
  STORAGE_UNAVAILABLE``: its last committed checkpoint is intact);
* ``failed`` otherwise, with the exit code, the tail of host 0's log and each
  other host's error line.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from optbench_jax import cli_errors
from optbench_jax import divergence
from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax.bench import results_store, sweep_config, trial_plan, trial_process

THRESHOLD_NAME = "the sweep's divergence.loss_threshold"


def number(value: Any) -> float:
  """A summary field as a float; missing or null (JSON None) is NaN."""
  try:
    return math.nan if value is None else float(value)
  except (TypeError, ValueError):
    return math.nan


def step_time(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
              tokens_per_step: int) -> float:
  """Seconds per step, preferring steady-state throughput (excludes compile time)."""
  if number(summary.get("tokens_per_s")) > 0:       # the trainer's compile-free mean
    return tokens_per_step / number(summary["tokens_per_s"])
  rates = [float(r["tokens_per_s"]) for r in records
           if "tokens_per_s" in r and float(r["tokens_per_s"]) > 0]
  rates = rates[1:] if len(rates) > 1 else rates      # the first window includes compilation
  if rates:
    rates.sort()
    return tokens_per_step / rates[len(rates) // 2]
  steps = int(summary.get("steps", 0) or 0)
  wall = number(summary.get("wall_time_s"))
  return wall / steps if steps > 0 else math.nan


def result(trial: trial_plan.Trial, status: str, reason: str, summary: Mapping[str, Any],
           records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict,
           trial_dir: str) -> results_store.TrialResult:
  """The stored result of ``trial`` from its summary and metrics records."""
  per_step = sweep_config.tokens_per_step(config)
  curve = tuple((int(r["step"]), float(r["eval_loss"])) for r in records if "eval_loss" in r)
  final = number(summary.get("final_eval_loss"))
  if status == results_store.COMPLETED and not math.isfinite(final):
    status, reason = results_store.DIVERGED, f"final eval loss {final}"
  return results_store.TrialResult(
      trial_id=trial.trial_id, optimizer=trial.optimizer, budget_steps=trial.budget_steps,
      seed=trial.seed, hparams=dict(trial.hparams), status=status, reason=reason,
      final_eval_loss=final, eval_curve=curve,
      wall_time_s=number(summary.get("wall_time_s")),
      steps=int(summary.get("steps", 0) or (records[-1].get("step", 0) if records else 0)),
      tokens=int(summary.get("tokens", 0) or 0), budget_tokens=trial.budget_steps * per_step,
      step_time_s=step_time(records, summary or {}, per_step),
      params=int(summary.get("params", 0) or 0),
      loss_floor=number(summary.get("loss_floor")),
      workdir=trial_dir, config=config.to_dict())


def divergence_rule(plain: Mapping[str, Any], budget_steps: int
                    ) -> Callable[[Sequence[Mapping[str, Any]]], str | None]:
  """The sweep's divergence rule for a trial of ``budget_steps``, on metrics records."""
  threshold = plain["divergence"]["loss_threshold"]
  after_step = sweep_config.divergence_step(plain, budget_steps)
  return lambda records: divergence.reason_in_records(records, threshold, after_step,
                                                      THRESHOLD_NAME)


def classify(trial: trial_plan.Trial, trial_dir: str, config: ml_collections.ConfigDict,
             plain: Mapping[str, Any], returncode: int | None, diverged: str | None,
             started: float, log_path: Callable[[int], str]
             ) -> results_store.TrialResult | None:
  """The result of a finished process, or None when it was interrupted (resume later).

  ``diverged``: the supervisor's reason when it stopped the trial by the rule;
  ``started``: when this attempt started (an older summary says nothing about
  it); ``log_path(host)``: where host ``host``'s log is.
  """
  records = workdir_files.read_metrics(trial_dir)
  summary_path = workdir_files.path(trial_dir, workdir_files.SUMMARY)
  summary, unreadable = {}, None
  # A summary left by an earlier attempt says nothing about this one. (On GCS the
  # object's time is the service's clock: 5 s of slack for skew with this host.)
  slack = 5.0 if storage.is_remote(summary_path) else 1.0
  if storage.exists(summary_path) and storage.mtime(summary_path) >= started - slack:
    try:
      summary = storage.read_json(summary_path)
    except (OSError, ValueError) as e:   # e.g. an older trainer killed mid-write
      unreadable = f"summary.json unreadable: {e}"

  def outcome(status: str, reason: str) -> results_store.TrialResult:
    return result(trial, status, reason, summary, records, config, trial_dir)

  if diverged:
    return outcome(results_store.DIVERGED, diverged)
  status = summary.get("status")
  if status == "completed":
    rule = divergence_rule(plain, trial.budget_steps)(records)
    return outcome(results_store.DIVERGED, rule) if rule else outcome(results_store.COMPLETED, "")
  if status == "diverged":
    reason = (summary.get("message") or divergence.reason_in_records(records, math.inf)
              or "trainer stopped: diverged")
    return outcome(results_store.DIVERGED, str(reason))
  if status == "preempted" or returncode == cli_errors.STORAGE_UNAVAILABLE:
    return None
  tail = trial_process.log_tail(log_path(0))
  reason = f"exit code {returncode}" + (f"; log tail:\n{tail}" if tail else "")
  for index in range(1, plain["hosts_per_trial"]):   # a multi-host trial's other hosts
    line = trial_process.error_line(trial_process.log_tail(log_path(index)))
    if line:
      reason += f"\nhost {index}: {line}"
  if unreadable:
    reason = f"{unreadable}; {reason}"
  elif returncode == 0:
    reason = f"exited 0 without a summary.json ({reason})"
  return outcome(results_store.FAILED, reason)
