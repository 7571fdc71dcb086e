"""Downstream scores of a sweep's or a study's trials, beside their losses.

A trial trained with ``train.downstream.tasks`` (``evaluate/in_training.py``)
holds its final harness scores in its ``summary.json`` as ``downstream``:
``{task: {metric: value}}``. The results store does not copy them; they are read
from the trial's work directory here.

* :func:`trial_scores`: one trial's ``{task: {metric: value}}`` ({} when it has none).
* :func:`mean_scores`: the mean over several runs (a best point's seeds) of each score.
* :func:`points`: one ``{optimizer, task, metric, value, final_loss}`` per score of
  every completed trial: the data of the score-against-loss figure, which asks
  whether optimizers that reach the same loss also score the same downstream
  (a faster optimizer, not a better model).
* :func:`columns` / :func:`column_name`: the ``(task, metric)`` columns of a table.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax.bench import results_store

Scores = dict[str, dict[str, float]]


def trial_scores(workdir: str | None) -> Scores:
  """``{task: {metric: value}}`` from the trial's ``summary.json``; {} if it has none."""
  if not workdir:
    return {}
  path = workdir_files.path(workdir, workdir_files.SUMMARY)
  try:
    if not storage.exists(path):
      return {}
    found = storage.read_json(path).get("downstream") or {}
  except (OSError, ValueError, AttributeError):
    return {}
  return {str(task): {str(m): float(v) for m, v in metrics.items()
                      if isinstance(v, (int, float)) and math.isfinite(v)}
          for task, metrics in found.items() if isinstance(metrics, Mapping)}


def mean_scores(all_scores: Iterable[Scores]) -> Scores:
  """The mean of each (task, metric) over the runs that have it."""
  sums: dict[tuple[str, str], list[float]] = {}
  for scores in all_scores:
    for task, metrics in scores.items():
      for metric, value in metrics.items():
        sums.setdefault((task, metric), []).append(value)
  out: Scores = {}
  for (task, metric), values in sums.items():
    out.setdefault(task, {})[metric] = sum(values) / len(values)
  return out


def columns(all_scores: Iterable[Scores]) -> list[tuple[str, str]]:
  """The sorted (task, metric) pairs present in any of ``all_scores``."""
  return sorted({(task, metric) for scores in all_scores
                 for task, metrics in scores.items() for metric in metrics})


def column_name(task: str, metric: str) -> str:
  return f"{task} {metric}"


def points(results: Sequence[results_store.TrialResult]) -> list[dict[str, Any]]:
  """Every completed trial's scores with its final loss (module docstring)."""
  out = []
  for result in results:
    if result.status != results_store.COMPLETED or not math.isfinite(result.final_eval_loss):
      continue
    for task, metrics in trial_scores(result.workdir).items():
      out += [{"optimizer": result.optimizer, "task": task, "metric": metric, "value": value,
               "final_loss": result.final_eval_loss} for metric, value in metrics.items()]
  return out
