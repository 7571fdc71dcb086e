"""``trainers.sweep --workdir=DIR --status``: what a sweep has done, is running, failed and has left.

Reads only: the sweep's snapshot (``sweep.json``), its results store and its
trial directories, locally or in a ``gs://`` bucket (the store through a fresh
local copy, as the report reads it); nothing is launched, locked or written, so it is safe while
the sweep's driver runs. The trials left are replayed from the store through
the sweep's own :class:`~optbench_jax.bench.trial_plan.TrialPlan`, so they are
exactly the trials the next invocation would start now. A tuner proposes more
trials as results arrive (coordinate descent, edge extension, seed replicas),
so "left" counts the trials known so far.

States: ``completed`` / ``diverged`` (recorded), ``running`` (a live process
holds the trial's workdir lock), ``rescheduling`` (a cluster executor lost the
trial's node and the live driver is starting it again), ``interrupted`` (started, no result: it
resumes from its checkpoint), ``failed`` (its last attempt crashed; a rerun
retries it), ``pending`` (not started).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax import workdir_lock
from optbench_jax.bench import results_store, study_plan, sweep_dir, trial_plan

RUNNING, RESCHEDULING, INTERRUPTED, PENDING = "running", "rescheduling", "interrupted", "pending"
STATES = (results_store.COMPLETED, results_store.DIVERGED, RUNNING, RESCHEDULING, INTERRUPTED,
          results_store.FAILED, PENDING)


class StatusError(ValueError):
  """The directory holds no sweep."""


@dataclasses.dataclass
class TrialRow:
  trial_id: str
  scale: str
  optimizer: str
  budget_steps: int
  seed: int
  hparams: dict[str, Any]
  state: str
  steps_done: int = 0
  final_eval_loss: float = math.nan
  note: str = ""


def collect(workdir: str) -> tuple[str, list[TrialRow]]:
  """(sweep name, one row per known trial: recorded ones, then the ones left)."""
  workdir = storage.resolve(workdir)
  try:
    snapshot = sweep_dir.read_snapshot(workdir)
  except FileNotFoundError as e:
    raise StatusError(f"{e}; start one with --config") from None
  if "study" in snapshot:   # a study: one sweep per scale, one plan
    plain = snapshot["study"]
    plan = study_plan.StudyPlan(plain)
  else:
    plain = snapshot["sweep"]
    plan = trial_plan.TrialPlan(plain)
  store = (results_store.ResultsStore.open_existing(sweep_dir.store_path(workdir))
           if sweep_dir.has_store(workdir) else None)
  try:
    final = {}
    failures: dict[str, results_store.TrialResult] = {}
    if store is not None:
      for result in store.latest():
        if result.status in results_store.FINAL_STATUSES:
          final[result.trial_id] = result
        else:
          failures[result.trial_id] = result
  finally:
    if store is not None:
      store.close()
  recorded: list[trial_plan.Trial] = []

  def known(trial):
    # A failure is fed back as the runner fed it in the invocation that recorded it
    # (objective inf), so the replay reaches the trials proposed after it.
    result = final.get(trial.trial_id) or failures.get(trial.trial_id)
    if result is None:
      return None
    recorded.append(trial)
    return result.objective

  left = plan.propose(known)
  rows = []
  driver = workdir_lock.read_holder(workdir)   # the sweep's driver, when one is alive
  for trial in recorded + left:
    trial_dir = sweep_dir.trial_dir(workdir, trial.trial_id)
    result = final.get(trial.trial_id)
    if result is not None:
      rows.append(TrialRow(trial.trial_id, trial.scale, trial.optimizer, trial.budget_steps,
                           trial.seed, dict(trial.hparams), result.status, result.steps,
                           result.final_eval_loss, result.reason.splitlines()[0][:80]
                           if result.reason else ""))
      continue
    steps = workdir_files.last_step(trial_dir)
    holder = workdir_lock.read_holder(trial_dir) if storage.isdir(trial_dir) else None
    rescheduling = (_rescheduling(trial_dir, driver)
                    if holder is None and driver is not None else None)
    if holder is not None:
      state, note = RUNNING, f"pid {holder.get('pid')} on {holder.get('host', '?')}"
    elif rescheduling is not None:
      state, note = RESCHEDULING, (
          f"node lost; retry {rescheduling.get('retry')} of {rescheduling.get('of')}: the "
          f"live driver (pid {driver.get('pid')}) restarts it from its checkpoint")
    elif trial.trial_id in failures:
      state = results_store.FAILED
      note = failures[trial.trial_id].reason.splitlines()[0][:80] + " (a rerun retries it)"
    elif storage.isdir(storage.join(trial_dir, "checkpoints")) or steps:
      state, note = INTERRUPTED, "resumes from its checkpoint on rerun"
    else:
      state, note = PENDING, ""
    rows.append(TrialRow(trial.trial_id, trial.scale, trial.optimizer, trial.budget_steps,
                         trial.seed, dict(trial.hparams), state, steps, math.nan, note))
  return str(plain.get("name", "")), rows


def _rescheduling(trial_dir: str, driver: dict) -> dict | None:
  """The trial's rescheduling marker when the live driver wrote it (not one left behind by
  an earlier driver that was killed), else None."""
  path = workdir_files.path(trial_dir, workdir_files.RESCHEDULING)
  try:
    value = storage.read_json(path) if storage.exists(path) else None
  except (OSError, ValueError):
    return None
  if not isinstance(value, dict):
    return None
  written, started = value.get("time"), driver.get("started")
  if isinstance(written, (int, float)) and isinstance(started, (int, float)) and written < started:
    return None
  return value


def counts(rows: list[TrialRow]) -> dict[str, int]:
  return {state: sum(1 for r in rows if r.state == state) for state in STATES}


def render(workdir: str, console: Console | None = None) -> dict[str, int]:
  """Prints the status table and the counts; returns the counts."""
  name, rows = collect(workdir)
  console = console or Console()
  studies = any(r.scale for r in rows)
  table = Table(title=f"{'study' if studies else 'sweep'} {name!r} in {workdir}", box=box.SIMPLE)
  # A trial id is the only column that tells rows apart: it is never cut; on a narrow
  # terminal (or a pipe, 80 columns) the other columns wrap instead.
  id_width = max((len(r.trial_id) for r in rows), default=5)
  table.add_column("trial", no_wrap=True, min_width=id_width)
  for column in ("scale",) * studies + ("optimizer", "budget", "seed", "state", "steps", "final eval loss", "note"):
    table.add_column(column, overflow="fold",
                     justify="right" if column in ("budget", "seed", "steps",
                                                   "final eval loss") else "left")
  for r in rows:
    table.add_row(r.trial_id, *((r.scale,) * studies), r.optimizer, str(r.budget_steps),
                  str(r.seed), r.state,
                  f"{r.steps_done}/{r.budget_steps}",
                  "" if math.isnan(r.final_eval_loss) else f"{r.final_eval_loss:.4f}", r.note)
  console.print(table)
  n = counts(rows)
  done = n[results_store.COMPLETED] + n[results_store.DIVERGED]
  console.print(
      f"done {done} ({n['completed']} completed, {n['diverged']} diverged), running "
      f"{n[RUNNING]}, rescheduling {n[RESCHEDULING]}, failed {n['failed']}, interrupted {n[INTERRUPTED]}, pending "
      f"{n[PENDING]} (left: trials known so far; tuners propose more as results arrive)")
  return n


def _listed(items: Sequence[str], limit: int = 6) -> str:
  more = len(items) - limit
  return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def stopped_summary(workdir: str, interrupted: Sequence[str], finished: Sequence[str]) -> list[str]:
  """The lines a driver that stopped early (its cluster gone) prints after its error: what
  the store holds, and which trials resume from their checkpoints on rerun. ``interrupted``
  and ``finished``: the trials the driver was running, and those it recorded. Read as
  ``--status`` reads it, once the driver has let go of the sweep."""
  _, rows = collect(workdir)
  n = counts(rows)
  by_id = {r.trial_id: r for r in rows}
  done = n[results_store.COMPLETED] + n[results_store.DIVERGED]
  resume = list(interrupted) + [r.trial_id for r in rows if r.trial_id not in interrupted and
                                r.state in (RUNNING, RESCHEDULING, INTERRUPTED)]

  pending = sum(1 for r in rows if r.state == PENDING and r.trial_id not in resume)

  def at(trial_id: str) -> str:
    row = by_id.get(trial_id)
    return f"{trial_id} (step {row.steps_done} of {row.budget_steps})" if row else trial_id
  return [
      f"[sweep] saved in {storage.join(storage.resolve(workdir), sweep_dir.STORE)}: "
      f"{done} finished ({n[results_store.COMPLETED]} completed, "
      f"{n[results_store.DIVERGED]} diverged), {len(finished)} of them in this run"
      + (f" ({_listed(list(finished))})" if finished else "")
      + (f"; {n[results_store.FAILED]} failed (a rerun retries them)"
         if n[results_store.FAILED] else ""),
      f"[sweep] interrupted, resuming from their last checkpoint on rerun: {len(resume)}"
      + (f" ({_listed([at(t) for t in resume])})" if resume else "")
      + f"; not started yet: {pending}"]
