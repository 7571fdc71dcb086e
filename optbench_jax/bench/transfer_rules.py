"""Carrying tuned hyperparameters to model sizes that were not tuned.

Three rules, chosen by a study's ``plan.transfer``:

* ``same``: the best point of the nearest tuned model size (the largest tuned
  size at or below the target, else the smallest) at the same budget multiple;
* ``fit``: Wen et al. (2025, "Fantastic Pretraining Optimizers and Where to
  Find Them", phase III; their ``hyper_scaling.py``) fit each numeric
  hyperparameter's best value over the tuned (N, D) cells as

      h(N, D) = A * N^B * D^C + E

  and read it off at the target's (N, D). With fewer than 5 cells (4
  parameters and one to spare), E is fixed at 0 and the law is the plane
  log h = log A + B log N + C log D, fitted by least squares. A hyperparameter
  that is not a positive number (a string, a bool, 0) or is the same in every
  tuned cell is carried unchanged from the nearest tuned size; integer
  hyperparameters are rounded. Fitted values keep 4 significant digits, so a
  trial's id does not depend on float noise.
* ``parametrization``: the point of ``same``, carried unchanged, for models
  trained under µP / CompleteP anchored at the tuned model's width and depth
  (``study_config``): there the optimizer's scaling rule
  (``optim/width_rules.py``) moves each parameter's rate inside the run, so the
  tuned numbers are the transferred ones (Tensor Programs V's µTransfer).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize


@dataclasses.dataclass(frozen=True)
class TunedCell:
  """One tuned (model size, budget) cell's best point."""
  params: float
  tokens: float
  chinchilla: float
  point: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class HyperLaw:
  """h(N, D) = A N^B D^C + E; ``cells`` the points it was fitted to."""
  A: float
  B: float
  C: float
  E: float
  cells: int

  def __call__(self, params: float, tokens: float) -> float:
    return self.A * params ** self.B * tokens ** self.C + self.E


def nearest(cells: Sequence[TunedCell], params: float, chinchilla: float) -> TunedCell:
  """The tuned cell of the largest size <= ``params`` (else the smallest) at the closest
  budget multiple."""
  sizes = sorted({c.params for c in cells})
  below = [n for n in sizes if n <= params]
  size = below[-1] if below else sizes[0]
  at_size = [c for c in cells if c.params == size]
  return min(at_size, key=lambda c: abs(math.log(c.chinchilla / chinchilla)))


def _numeric(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
      value) and value > 0


def fit_law(params: Sequence[float], tokens: Sequence[float], values: Sequence[float]
            ) -> HyperLaw:
  """The law above through the tuned cells (see the module docstring for the form used)."""
  n, d, h = (np.asarray(x, dtype=np.float64) for x in (params, tokens, values))
  n0, d0 = float(np.exp(np.mean(np.log(n)))), float(np.exp(np.mean(np.log(d))))
  design = np.stack([np.ones_like(n), np.log(n / n0), np.log(d / d0)], axis=1)
  (log_a, b, c), *_ = np.linalg.lstsq(design, np.log(h), rcond=None)
  a, e = float(np.exp(log_a)), 0.0
  if len(h) >= 5:
    def law(x, a_, b_, c_, e_):
      return a_ * (x[0] / n0) ** b_ * (x[1] / d0) ** c_ + e_
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (a4, b4, c4, e4), _ = optimize.curve_fit(
            law, np.stack([n, d]), h, p0=[a, b, c, 0.0], maxfev=20000,
            bounds=([1e-30, -5, -5, -np.inf], [np.inf, 5, 5, float(np.min(h))]))
      if np.sum((law(np.stack([n, d]), a4, b4, c4, e4) - h) ** 2) < np.sum(
          (law(np.stack([n, d]), a, b, c, 0.0) - h) ** 2):
        a, b, c, e = float(a4), float(b4), float(c4), float(e4)
    except (RuntimeError, ValueError):
      pass   # the plane stands
  # Undo the normalisation: A (N/n0)^B (D/d0)^C = (A n0^-B d0^-C) N^B D^C.
  return HyperLaw(A=a * n0 ** (-b) * d0 ** (-c), B=float(b), C=float(c), E=e, cells=len(h))


def _round(value: float, like: Sequence[Any]) -> Any:
  if all(isinstance(v, int) for v in like):
    return max(1, int(round(value)))
  return float(f"{value:.4g}")


def carry(cells: Sequence[TunedCell], params: float, tokens: float, chinchilla: float,
          rule: str) -> tuple[dict[str, Any], dict[str, HyperLaw]]:
  """(the point for the target cell, the law of each fitted hyperparameter)."""
  if not cells:
    raise ValueError("no tuned cell to transfer from")
  base = dict(nearest(cells, params, chinchilla).point)
  if rule in ("same", "parametrization"):
    return base, {}
  if rule != "fit":
    raise ValueError(f"unknown transfer rule {rule!r}")
  laws = {}
  for name in base:
    values = [c.point.get(name) for c in cells]
    if not all(_numeric(v) for v in values) or len(set(values)) == 1:
      continue
    law = fit_law([c.params for c in cells], [c.tokens for c in cells], values)
    predicted = law(params, tokens)
    if not (math.isfinite(predicted) and predicted > 0):
      continue    # the fit says nothing usable here: keep the nearest tuned value
    laws[name] = law
    base[name] = _round(predicted, values)
  return base, laws


def local_grid(point: Mapping[str, Any], factors: Mapping[str, Sequence[float]]
               ) -> dict[str, list[Any]]:
  """{hp: sorted carried value * each factor}: the reduced search around a carried point."""
  grid = {}
  for name, scale in factors.items():
    if name not in point or not _numeric(point[name]):
      continue
    values = {_round(point[name] * f, [point[name]]) for f in scale} | {point[name]}
    grid[name] = sorted(values)
  return grid
