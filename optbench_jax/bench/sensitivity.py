"""Hyperparameter sensitivity: final loss versus each hyperparameter around the optimum.

For the best point of an optimizer at a budget, the *slice* along hyperparameter
``h`` is every trial at that budget (tuning seed) that equals the best point in
all other hyperparameters. Coordinate descent evaluates exactly these
one-at-a-time neighbours in its last round, and a full grid contains them, so
no extra trials are needed. A flat slice means the optimizer is forgiving about
``h``; a sharp one means a tuning budget matters.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from optbench_jax.bench import results_store


def slice_along(results: Sequence[results_store.TrialResult], optimizer: str, budget_steps: int,
                seed: int, best: Mapping[str, Any], name: str) -> list[tuple[Any, float]]:
  """(value of ``name``, final loss) for trials differing from ``best`` only in ``name``.

  Diverged or failed trials appear with loss +inf, sorted by value.
  """
  points = {}
  for r in results:
    if r.optimizer != optimizer or r.budget_steps != budget_steps or r.seed != seed:
      continue
    if name not in r.hparams or set(r.hparams) != set(best):
      continue
    if all(r.hparams[k] == v for k, v in best.items() if k != name):
      points[r.hparams[name]] = r.objective
  return sorted(points.items(), key=lambda item: (isinstance(item[0], str), item[0]))


def sensitivity(results: Sequence[results_store.TrialResult], optimizer: str, budget_steps: int,
                seed: int, best: Mapping[str, Any], names: Sequence[str]
                ) -> dict[str, list[tuple[Any, float]]]:
  """Slices along every swept hyperparameter that has at least two evaluated values."""
  out = {}
  for name in names:
    line = slice_along(results, optimizer, budget_steps, seed, best, name)
    if len(line) >= 2:
      out[name] = line
  return out


def loss_increase(line: Sequence[tuple[Any, float]]) -> float:
  """Worst finite loss minus the best along a slice (how much a bad value costs)."""
  finite = [loss for _, loss in line if math.isfinite(loss)]
  return max(finite) - min(finite) if len(finite) >= 2 else math.nan
