"""Speedup over AdamW as Wen et al. (2025) define it, with a bootstrap interval.

Fit the reference optimizer's (AdamW's) best final loss against the data budget
D (tokens) with a saturating power law

    L(D) = alpha * D^(-beta) + gamma,

then an optimizer that reaches loss L at budget D would have needed

    D_eff = ((L - gamma) / alpha)^(-1 / beta)

tokens of AdamW, and its speedup is ``D_eff / D`` (> 1: faster than AdamW). A
loss at or below gamma lies beyond the fitted curve: the speedup is +inf.

The interval is a bootstrap over seeds: in each replicate, the seeds of every
budget are resampled with replacement (AdamW's and the optimizer's
independently), the per-budget means are recomputed, the law is refitted, and
the speedup recomputed; the interval is the percentile range.

With fewer than three budgets (or when the floor is known, e.g. the entropy of
the synthetic corpus) gamma can be fixed, leaving alpha and beta to fit.

The wall-clock-adjusted speedup divides by the optimizer's step-time overhead
(its seconds per step over AdamW's at the same budget): an optimizer that needs
half the tokens but takes twice as long per step gains nothing in time.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L(D) = alpha D^-beta + gamma."""
  alpha: float
  beta: float
  gamma: float

  def loss(self, tokens) -> np.ndarray:
    return self.alpha * np.asarray(tokens, dtype=np.float64) ** (-self.beta) + self.gamma

  def effective_tokens(self, loss: float) -> float:
    """D_eff: the budget at which the fitted law reaches ``loss`` (inf below gamma)."""
    excess = loss - self.gamma
    if not math.isfinite(loss):
      return 0.0 if loss > 0 else math.inf
    if excess <= 0:
      return math.inf
    return float((excess / self.alpha) ** (-1.0 / self.beta))


def fit_power_law(tokens: Sequence[float], losses: Sequence[float],
                  gamma: float | None = None) -> PowerLaw:
  """Least-squares fit of L(D) = alpha D^-beta + gamma (``scipy.optimize.curve_fit``).

  Args:
    tokens: budgets D (> 0), at least 2 distinct (3 if gamma is fitted).
    losses: the reference optimizer's loss at each budget (finite).
    gamma: fix the irreducible loss instead of fitting it.

  Budgets are normalised by their geometric mean before fitting so the problem
  is well scaled (alpha for D ~ 1e9 would otherwise be ~1e9^beta). Bounds:
  beta in (0, 4]; 0 <= gamma < min(loss) (the floor lies below every observed
  loss); alpha > 0.
  """
  d = np.asarray(tokens, dtype=np.float64)
  y = np.asarray(losses, dtype=np.float64)
  if d.shape != y.shape or d.ndim != 1:
    raise ValueError(f"tokens and losses must be matching 1-D sequences, got {d.shape}, {y.shape}")
  if not np.all(np.isfinite(y)):
    raise ValueError(f"the reference losses must be finite to fit L(D), got {y.tolist()}")
  if np.any(d <= 0):
    raise ValueError(f"budgets must be positive, got {d.tolist()}")
  distinct = len(np.unique(d))
  needed = 2 if gamma is not None else 3
  if distinct < needed:
    raise ValueError(
        f"fitting L(D) = alpha D^-beta + gamma needs >= {needed} distinct budgets"
        f"{'' if gamma is not None else ' (or a fixed gamma)'}; got {distinct}")
  scale = float(np.exp(np.mean(np.log(d))))
  x = d / scale
  y_min = float(np.min(y))
  if gamma is not None:
    if not gamma < y_min:
      raise ValueError(f"fixed gamma {gamma} must lie below every reference loss (min {y_min})")
    excess = y - gamma
    # Starting point from the log-log line through the points.
    slope, intercept = np.polyfit(np.log(x), np.log(excess), 1)
    p0 = [float(np.exp(intercept)), float(np.clip(-slope, 1e-3, 3.9))]
    with warnings.catch_warnings():   # two points: an exact fit, no covariance
      warnings.simplefilter("ignore", optimize.OptimizeWarning)
      (a, b), _ = optimize.curve_fit(
          lambda x_, a_, b_: a_ * x_ ** (-b_) + gamma, x, y, p0=p0,
          bounds=([1e-12, 1e-6], [np.inf, 4.0]), maxfev=20000)
    g = gamma
  else:
    g0 = max(0.0, y_min - 0.5 * (float(np.max(y)) - y_min) - 1e-3)
    p0 = [max(float(np.max(y)) - g0, 1e-6), 0.3, g0]
    (a, b, g), _ = optimize.curve_fit(
        lambda x_, a_, b_, g_: a_ * x_ ** (-b_) + g_, x, y, p0=p0,
        bounds=([1e-12, 1e-6, 0.0], [np.inf, 4.0, y_min * (1 - 1e-9)]), maxfev=20000)
  # Undo the normalisation: a (D/s)^-b = (a s^b) D^-b.
  return PowerLaw(alpha=float(a * scale ** b), beta=float(b), gamma=float(g))


def speedup(law: PowerLaw, loss: float, tokens: float) -> float:
  """D_eff / D for an optimizer reaching ``loss`` after ``tokens``."""
  return law.effective_tokens(loss) / float(tokens)


@dataclasses.dataclass(frozen=True)
class SpeedupEstimate:
  point: float          # speedup from the seed means
  low: float            # bootstrap percentile interval
  high: float
  num_seeds: int        # seeds of the optimizer at this budget
  num_bootstrap: int


def _fit(reference: Mapping[float, np.ndarray], gamma: float | None) -> PowerLaw:
  budgets = sorted(reference)
  return fit_power_law(budgets, [float(np.mean(reference[b])) for b in budgets], gamma)


def bootstrap_speedup(reference: Mapping[float, Sequence[float]], losses: Sequence[float],
                      tokens: float, gamma: float | None = None, num_bootstrap: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> SpeedupEstimate:
  """Speedup of an optimizer at budget ``tokens`` with a bootstrap-over-seeds interval.

  Args:
    reference: budget (tokens) -> the reference optimizer's best-config final
      loss for each seed.
    losses: the optimizer's best-config final loss at ``tokens``, one per seed.
    tokens: the budget the optimizer was run at.
    gamma: fixed floor (see :func:`fit_power_law`), or None to fit it.
    num_bootstrap: replicates; confidence: width of the percentile interval.
  """
  reference = {float(b): np.asarray(v, dtype=np.float64) for b, v in reference.items()}
  losses = np.asarray(losses, dtype=np.float64)
  if losses.size == 0:
    raise ValueError("no losses for the optimizer at this budget")
  for b, v in reference.items():
    if v.size == 0:
      raise ValueError(f"no reference losses at budget {b}")
  point = speedup(_fit(reference, gamma), float(np.mean(losses)), tokens)
  rng = np.random.default_rng(seed)
  samples = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optimize.OptimizeWarning)
    for _ in range(num_bootstrap):
      resampled = {b: rng.choice(v, size=v.size, replace=True) for b, v in reference.items()}
      mine = rng.choice(losses, size=losses.size, replace=True)
      try:
        samples.append(speedup(_fit(resampled, gamma), float(np.mean(mine)), tokens))
      except (RuntimeError, ValueError):     # a replicate the law cannot fit: skip it
        continue
  if not samples:
    return SpeedupEstimate(point, math.nan, math.nan, int(losses.size), 0)
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(np.asarray(samples), [tail, 100 - tail])
  return SpeedupEstimate(point, float(low), float(high), int(losses.size), len(samples))


def step_time_overhead(step_times: Sequence[float], reference_step_times: Sequence[float]) -> float:
  """Median seconds per step of an optimizer over the reference's (1.0 = same speed)."""
  mine = [t for t in step_times if math.isfinite(t) and t > 0]
  ref = [t for t in reference_step_times if math.isfinite(t) and t > 0]
  if not mine or not ref:
    return math.nan
  return float(np.median(mine) / np.median(ref))


def wall_clock_speedup(token_speedup: float, overhead: float) -> float:
  """Speedup in time: the token speedup divided by the step-time overhead."""
  return token_speedup / overhead if math.isfinite(overhead) and overhead > 0 else math.nan
