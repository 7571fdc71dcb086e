"""Tuners: full grid, and coordinate descent as Wen et al. (2025) tune (phase I).

A tuner is ask/tell: ``propose()`` returns the next batch of hyperparameter
points to evaluate (all independent, so a sweep may run them in parallel),
``observe(point, loss)`` reports one result, and an empty batch means done.
Losses are minimised; a diverged or failed trial reports ``+inf``.

Coordinate descent (Wen et al. 2025, "Fantastic Pretraining Optimizers and
Where to Find Them", Sec. 3): start from a baseline point; each round tries
every one-at-a-time change of the current point over each hyperparameter's
grid, then adopts the best change if it beats the current loss by more than
``threshold`` (3e-3 in the paper); stop when no change does. Points already
evaluated are not re-run and do not count against the budget.

Deviation: the paper has no cap on the number of trials; here a
``trial_budget`` caps each optimizer's trials so that every optimizer gets the
same tuning effort (a fair comparison). When a round would exceed the budget,
the round is cut in hyperparameter order and descent stops after it.

Edge extension (both tuners; an extension of the papers' protocol): a grid is
a guess, and a best value at its edge means the optimum may lie beyond it.
``edge_extension = {name: k}`` lets a tuner add up to ``k`` values beyond each
edge of ``name``'s grid (continuing its spacing, ``search_space.extend_grid``):

* grid search: once every proposed point has a result, if the best finite
  point sits at an edge of ``name``'s (extended) grid, the point with the next
  value beyond that edge is evaluated; repeated until the best is interior or
  the ``k`` extra values of that side are used;
* coordinate descent: when descent has moved ``name`` to an edge of its grid
  (away from the baseline's value), the next round's one-at-a-time changes
  include the next value beyond that edge. Trials still count against
  ``trial_budget``, so every optimizer keeps the same tuning effort.

The same ``edge_extension`` applies to every optimizer of a sweep.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, Sequence

from optbench_jax.bench import search_space

Point = dict[str, Any]


def point_key(point: Mapping[str, Any]) -> str:
  """A canonical string for a hyperparameter point (dict order does not matter)."""
  return json.dumps(dict(point), sort_keys=True)


class _EdgeExtension:
  """Bookkeeping of the values added beyond each grid edge (see the module doc)."""

  def __init__(self, grid: Mapping[str, Sequence[Any]], limits: Mapping[str, int] | None):
    self.grid = {name: list(values) for name, values in grid.items()}
    self.limits = {name: int(k) for name, k in (limits or {}).items() if name in grid}
    self.used = {(name, side): 0 for name in self.limits for side in ("low", "high")}

  def beyond(self, name: str, value: Any) -> Any | None:
    """The next value past the edge ``value`` sits on, or None (interior / limit reached)."""
    if name not in self.limits:
      return None
    numbers = search_space.numeric_values(self.grid[name])
    if not search_space.numeric_values([value]) or len(numbers) < 2:
      return None
    if value == max(numbers):
      side = "high"
    elif value == min(numbers):
      side = "low"
    else:
      return None
    if self.used[(name, side)] >= self.limits[name]:
      return None
    new = search_space.extend_grid(numbers, side)
    if new is None or new in self.grid[name]:
      return None
    self.used[(name, side)] += 1
    self.grid[name].append(new)
    return new


class _Tuner:
  """What both tuners share: proposed points, pending results, losses, the grid."""

  def __init__(self, grid: Mapping[str, Sequence[Any]], edge_extension: Mapping[str, int] | None):
    self._edges = _EdgeExtension(grid, edge_extension)
    self._points: dict[str, Point] = {}    # key -> every point proposed so far
    self._pending: set[str] = set()        # keys proposed and not yet observed
    self.losses: dict[str, float] = {}

  @property
  def grid(self) -> dict[str, list[Any]]:
    """The grid with any values added beyond its edges."""
    return {name: list(values) for name, values in self._edges.grid.items()}

  def _register(self, points: list[Point]) -> list[Point]:
    for point in points:
      key = point_key(point)
      self._points[key] = point
      self._pending.add(key)
    return [dict(p) for p in points]

  def observe(self, point: Mapping[str, Any], loss: float) -> None:
    key = point_key(point)
    if key not in self._points:
      raise KeyError(f"observed a point that was never proposed: {key}")
    self.losses[key] = float(loss)
    self._pending.discard(key)

  @property
  def num_trials(self) -> int:
    """Distinct points proposed so far (each costs one trial)."""
    return len(self._points)

  @property
  def best(self) -> tuple[Point, float]:
    return _best(self._points, self.losses)


class GridTuner(_Tuner):
  """Evaluates every point of the grid (on top of the baseline), then extends edges."""

  def __init__(self, grid: Mapping[str, Sequence[Any]], baseline: Mapping[str, Any] | None = None,
               edge_extension: Mapping[str, int] | None = None):
    super().__init__(grid, edge_extension)
    self._batch = self._register(search_space.expand_grid(grid, baseline))
    self._exhausted = False               # propose() found nothing left to run

  def propose(self) -> list[Point]:
    batch, self._batch = self._batch, []
    if batch or self._pending:
      return batch
    extension = self._extend()
    self._exhausted = not extension
    return extension

  def _extend(self) -> list[Point]:
    if not self.losses:
      return []
    best, loss = self.best
    if not math.isfinite(loss):
      return []
    for name in sorted(self._edges.limits):
      value = self._edges.beyond(name, best.get(name))
      if value is not None:
        point = {**best, name: value}
        if point_key(point) not in self._points:
          return self._register([point])
    return []

  @property
  def done(self) -> bool:
    """Every point has a result and ``propose`` found no edge left to extend."""
    return self._exhausted and not self._pending


class CoordinateDescentTuner(_Tuner):
  """Wen et al. (2025) coordinate descent with an equal-effort trial budget."""

  def __init__(self, grid: Mapping[str, Sequence[Any]], baseline: Mapping[str, Any],
               threshold: float = 3e-3, trial_budget: int | None = None,
               edge_extension: Mapping[str, int] | None = None):
    missing = sorted(set(grid) - set(baseline))
    if missing:
      raise search_space.SearchSpaceError(
          f"coordinate descent needs a baseline value for {', '.join(missing)}")
    if trial_budget is not None and trial_budget < 1:
      raise search_space.SearchSpaceError(f"trial_budget must be >= 1, got {trial_budget}")
    super().__init__(grid, edge_extension)
    self._grid = self._edges.grid         # name -> values, extended in place
    self.baseline: Point = dict(baseline)
    self.threshold = float(threshold)
    self.trial_budget = trial_budget
    self.current: Point = dict(baseline)
    self._round: list[str] | None = None   # keys compared in the running round
    self._round_cut = False                 # the running round was cut by the budget
    self._done = False
    self.rounds = 0

  @property
  def done(self) -> bool:
    return self._done

  def _budget_left(self) -> float:
    return math.inf if self.trial_budget is None else self.trial_budget - self.num_trials

  def _neighbours(self) -> list[Point]:
    for name in self._grid:     # descent reached an edge: look one value beyond it
      if self.current[name] != self.baseline[name]:
        self._edges.beyond(name, self.current[name])
    points = []
    for name in self._grid:     # insertion order: the order the config lists them
      for value in self._grid[name]:
        if value != self.current[name]:
          points.append({**self.current, name: value})
    return points

  def propose(self) -> list[Point]:
    while not self._done and not self._pending:
      current_key = point_key(self.current)
      if current_key not in self.losses:       # first call: evaluate the baseline
        if self._budget_left() < 1:
          self._done = True
          return []
        return self._register([dict(self.current)])
      if self._round is None:                  # start a round of one-at-a-time changes
        neighbours = self._neighbours()
        fresh = [p for p in neighbours if point_key(p) not in self._points]
        left = self._budget_left()
        self._round_cut = len(fresh) > left
        fresh = fresh[:int(min(left, len(fresh)))]
        self._register(fresh)
        self._round = [point_key(p) for p in neighbours if point_key(p) in self._points]
        if fresh:
          return fresh
      self._finish_round(current_key)
    return []

  def _finish_round(self, current_key: str) -> None:
    """Adopts the best one-at-a-time change if it improves by more than the threshold."""
    self.rounds += 1
    candidates = [k for k in self._round if k in self.losses]
    self._round = None
    best_key = min(candidates, key=lambda k: self.losses[k], default=None)
    improved = (best_key is not None and
                self.losses[best_key] < self.losses[current_key] - self.threshold)
    if improved:
      self.current = dict(self._points[best_key])
    if not improved or self._round_cut or self._budget_left() < 1:
      self._done = True

def _best(points: Mapping[str, Point], losses: Mapping[str, float]) -> tuple[Point, float]:
  if not losses:
    raise ValueError("no point has been evaluated yet")
  key = min(losses, key=lambda k: (losses[k], k))
  return dict(points[key]), losses[key]


def run_tuner(tuner, objective: Callable[[Point], float]) -> tuple[Point, float]:
  """Drives ``tuner`` to completion with a synchronous ``objective`` (tests, small studies)."""
  while True:
    batch = tuner.propose()
    if not batch:
      return tuner.best
    for point in batch:
      tuner.observe(point, objective(point))


def make_tuner(strategy: str, grid: Mapping[str, Sequence[Any]], baseline: Mapping[str, Any],
               threshold: float = 3e-3, trial_budget: int | None = None,
               edge_extension: Mapping[str, int] | None = None):
  """The tuner named by a sweep config's ``strategy``."""
  if strategy == "grid":
    return GridTuner(grid, baseline, edge_extension)
  if strategy == "coordinate_descent":
    return CoordinateDescentTuner(grid, baseline, threshold, trial_budget, edge_extension)
  raise search_space.SearchSpaceError(
      f"unknown strategy {strategy!r}; valid: 'grid', 'coordinate_descent'")
