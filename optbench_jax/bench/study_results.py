"""A study's work directory as the analysis's tables: best runs, curves, tuning, compute.

Reads the study's snapshot and results store (locally or through a fresh copy
of a ``gs://`` store), replays the study's plan from the store as ``--status``
does (so the best point of every tuner, and every carried point, is exactly
what the runner found), and returns what ``study_analysis.analyse`` takes:

* ``rows``: one per seed of each (optimizer, scale, budget)'s best point: the
  final validation loss (inf if that run diverged);
* ``curves``: the validation-loss curves of those runs, at fractions of their
  budget (for rank flips);
* ``tuning``: for each (optimizer, scale, budget), the grid searched, the best
  point and the points tried (for tuning health);
* ``compute``: the optimizer steps the study trained, against the steps the
  same finished trials would have needed as separate runs (shared stable
  phases: ``train.branching``);
* ``downstream``: for each of those runs trained with ``train.downstream``, one
  row per final harness score (read from the trial's ``summary.json``:
  :mod:`downstream`) with the run's final loss.
"""

from __future__ import annotations

import math
from typing import Any

from optbench_jax import storage
from optbench_jax.bench import downstream as downstream_lib
from optbench_jax.bench import results_store, study_plan, sweep_dir, trial_plan
from optbench_jax.train import run_record


def replay(workdir: str) -> tuple[dict[str, Any], study_plan.StudyPlan,
                                  dict[str, results_store.TrialResult]]:
  """(the study, its plan replayed from the store, trial id -> latest result)."""
  snapshot = sweep_dir.read_snapshot(workdir)
  if "study" not in snapshot:
    raise FileNotFoundError(f"{workdir} holds a sweep, not a study (see trainers.sweep)")
  study = snapshot["study"]
  latest: dict[str, results_store.TrialResult] = {}
  if sweep_dir.has_store(workdir):
    with results_store.ResultsStore.open_existing(sweep_dir.store_path(workdir)) as store:
      latest = {r.trial_id: r for r in store.latest()}
  plan = study_plan.StudyPlan(study)
  plan.propose(lambda t: latest[t.trial_id].objective if t.trial_id in latest else None)
  return study, plan, latest


def _tuners(plan: study_plan.StudyPlan):
  """(scale label, optimizer, budget, tuner, sweep dict) of every tuner of the plan."""
  for key, sub in plan.subplans.items():
    for (optimizer, budget), tuner in sub.tuners.items():
      yield key[0], optimizer, budget, tuner, sub.plain


def collect(workdir: str) -> dict[str, Any]:
  """{study, rows, curves, tuning, compute, downstream, notes, loss_floor} (module docstring;
  ``loss_floor``: the corpus's entropy floor when the trials know it, else None)."""
  study, plan, latest = replay(workdir)
  rows, curves, tuning, scores = [], [], [], []
  multiple_batches = len(study.get("batch_sizes") or []) > 1
  for label, optimizer, budget, tuner, sweep in _tuners(plan):
    scale = study["scales"][label]
    index = scale["sweep"]["budgets"].index(budget)
    point, loss = tuner.best
    kind, values = next(iter(study["budgets"].items()))
    multiple = float(values[index]) if kind == "chinchilla" else scale["chinchilla"][index]
    cell = dict(optimizer=optimizer, model=scale["model"], params=scale["params"],
                tokens=scale["tokens"][index], chinchilla=multiple,
                batch_size=scale["batch_size"] if multiple_batches else None)
    tried = [dict(r.hparams) for r in latest.values()
             if r.optimizer == optimizer and r.budget_steps == budget
             and r.seed == study["seeds"][0]
             and r.trial_id == trial_plan.Trial(optimizer, r.hparams, budget, r.seed,
                                                label).trial_id]
    if tried and sweep["optimizers"][optimizer]["grid"]:   # (a carried point alone: no search)
      tuning.append(dict(cell, grid=sweep["optimizers"][optimizer]["grid"], best=dict(point),
                         tried=tried))
    if not math.isfinite(loss):
      continue
    seeds = list(study["seeds"])
    if optimizer == study["reference_optimizer"] and budget == min(scale["sweep"]["budgets"]):
      seeds += list(study.get("noise_seeds", []))   # the repeats that measure the seed noise
    for seed in seeds:
      result = latest.get(trial_plan.Trial(optimizer, point, budget, seed, label).trial_id)
      if result is None or result.status == results_store.FAILED:
        continue
      rows.append(dict(cell, seed=seed, final_loss=result.objective))
      if result.status == results_store.COMPLETED:
        scores += [dict(cell, seed=seed, task=task, metric=metric, value=value,
                        final_loss=result.objective)
                   for task, metrics in downstream_lib.trial_scores(result.workdir).items()
                   for metric, value in metrics.items()]
      for step, value in result.eval_curve:
        curves.append(dict(cell, seed=seed, fraction=step / budget, eval_loss=value))
  floors = [r.loss_floor for r in latest.values() if math.isfinite(r.loss_floor)]
  return dict(study=study, rows=rows, curves=curves, tuning=tuning,
              compute=compute(latest.values()), downstream=scores, notes=list(plan.notes),
              loss_floor=min(floors) if floors else None)


def compute(results) -> dict[str, int]:
  """Steps trained by the finished trials, and what separate runs of them would need."""
  trained = separate = 0
  for result in results:
    if result.status not in results_store.FINAL_STATUSES:
      continue
    steps = int(result.steps)
    record = run_record.read_record(result.workdir) if result.workdir and storage.exists(
        result.workdir) else None
    branched = (record or {}).get("branched_from") or {}
    separate += steps
    trained += steps - int(branched.get("step", 0))
  return dict(steps_trained=trained, steps_if_separate=separate)
