"""Was an optimizer's best configuration tuned far enough to trust?

Wen et al. (2025, "Fantastic Pretraining Optimizers and Where to Find Them",
arXiv 2509.02046, Sec. 2) call a configuration a (coordinate-wise) local
optimum only when every one-step neighbour, i.e. the point with one
hyperparameter moved to the adjacent value of its grid, has been run and is no
better. A best value at the end of a numeric grid (its minimum or maximum) may
be cut off by the grid: the optimum may lie beyond it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def _numeric(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
  if _numeric(a) and _numeric(b):
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)
  return a == b


def _ordered(values: Sequence[Any], best: Any) -> list[Any]:
  """The grid values (plus the best, if an edge extension went beyond them), in grid order."""
  values = list(values)
  if not any(_same(v, best) for v in values):
    values.append(best)
  if all(_numeric(v) for v in values):
    values = sorted(values, key=float)
  return values


def neighbours(grid: Mapping[str, Sequence[Any]], best: Mapping[str, Any]) -> list[dict]:
  """Every point that moves one hyperparameter of ``best`` to an adjacent value of its grid."""
  out = []
  for hp, values in grid.items():
    if hp not in best:
      continue
    values = _ordered(values, best[hp])
    i = next(i for i, v in enumerate(values) if _same(v, best[hp]))
    for j in (i - 1, i + 1):
      if 0 <= j < len(values):
        out.append({**best, hp: values[j]})
  return out


def _was_run(point: Mapping[str, Any], tried: Sequence[Mapping[str, Any]],
             keys: Sequence[str]) -> bool:
  return any(all(k in t and _same(t[k], point[k]) for k in keys) for t in tried)


def on_edge(grid: Mapping[str, Sequence[Any]], best: Mapping[str, Any]) -> list[str]:
  """Hyperparameters whose best value is the min or max of a numeric grid of >= 2 values."""
  edge = []
  for hp, values in grid.items():
    numeric = [float(v) for v in values if _numeric(v)]
    value = best.get(hp)
    if len(numeric) < 2 or len(numeric) != len(values) or not _numeric(value):
      continue
    low, high = min(numeric), max(numeric)
    if _same(value, low) or _same(value, high) or not low < float(value) < high:
      edge.append(hp)
  return edge


def health(grid: Mapping[str, Sequence[Any]], best: Mapping[str, Any],
           tried: Sequence[Mapping[str, Any]]) -> dict:
  """{neighbours_run, missing_neighbours, on_edge} of a best point.

  Args:
    grid: hyperparameter -> the values searched.
    best: the best point (hyperparameter -> value).
    tried: every point run (each a hyperparameter -> value dict; keys outside
      ``grid`` are ignored when matching).
  """
  keys = [hp for hp in grid if hp in best]
  missing = [n for n in neighbours(grid, best) if not _was_run(n, tried, keys)]
  return {"neighbours_run": not missing, "missing_neighbours": missing,
          "on_edge": on_edge(grid, best)}
