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


class GridTuner:
  """Evaluates every point of the grid (on top of the baseline) in one batch."""

  def __init__(self, grid: Mapping[str, Sequence[Any]], baseline: Mapping[str, Any] | None = None):
    self._points = search_space.expand_grid(grid, baseline)
    self._proposed = False
    self.losses: dict[str, float] = {}
    self._by_key = {point_key(p): p for p in self._points}

  def propose(self) -> list[Point]:
    if self._proposed:
      return []
    self._proposed = True
    return [dict(p) for p in self._points]

  def observe(self, point: Mapping[str, Any], loss: float) -> None:
    self.losses[point_key(point)] = loss

  @property
  def num_trials(self) -> int:
    return len(self._points)

  @property
  def best(self) -> tuple[Point, float]:
    return _best(self._by_key, self.losses)


class CoordinateDescentTuner:
  """Wen et al. (2025) coordinate descent with an equal-effort trial budget."""

  def __init__(self, grid: Mapping[str, Sequence[Any]], baseline: Mapping[str, Any],
               threshold: float = 3e-3, trial_budget: int | None = None):
    missing = sorted(set(grid) - set(baseline))
    if missing:
      raise search_space.SearchSpaceError(
          f"coordinate descent needs a baseline value for {', '.join(missing)}")
    if trial_budget is not None and trial_budget < 1:
      raise search_space.SearchSpaceError(f"trial_budget must be >= 1, got {trial_budget}")
    self._grid = {name: tuple(grid[name]) for name in grid}
    self.threshold = float(threshold)
    self.trial_budget = trial_budget
    self.current: Point = dict(baseline)
    self.losses: dict[str, float] = {}
    self._points: dict[str, Point] = {}
    self._pending: set[str] = set()
    self._round: list[str] | None = None   # keys compared in the running round
    self._round_cut = False                 # the running round was cut by the budget
    self._done = False
    self.rounds = 0

  @property
  def num_trials(self) -> int:
    """Distinct points proposed so far (each costs one trial)."""
    return len(self._points)

  @property
  def done(self) -> bool:
    return self._done

  def _budget_left(self) -> float:
    return math.inf if self.trial_budget is None else self.trial_budget - self.num_trials

  def _neighbours(self) -> list[Point]:
    points = []
    for name in self._grid:     # insertion order: the order the config lists them
      for value in self._grid[name]:
        if value != self.current[name]:
          points.append({**self.current, name: value})
    return points

  def _register(self, points: list[Point]) -> list[Point]:
    for point in points:
      key = point_key(point)
      self._points[key] = point
      self._pending.add(key)
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

  def observe(self, point: Mapping[str, Any], loss: float) -> None:
    key = point_key(point)
    if key not in self._points:
      raise KeyError(f"observed a point that was never proposed: {key}")
    self.losses[key] = float(loss)
    self._pending.discard(key)

  @property
  def best(self) -> tuple[Point, float]:
    return _best(self._points, self.losses)


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
               threshold: float = 3e-3, trial_budget: int | None = None):
  """The tuner named by a sweep config's ``strategy``."""
  if strategy == "grid":
    return GridTuner(grid, baseline)
  if strategy == "coordinate_descent":
    return CoordinateDescentTuner(grid, baseline, threshold, trial_budget)
  raise search_space.SearchSpaceError(
      f"unknown strategy {strategy!r}; valid: 'grid', 'coordinate_descent'")
