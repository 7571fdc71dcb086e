"""The joint scaling law L(N, D) of one optimizer, and speedups extrapolated from it.

Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models",
arXiv 2203.15556, eq. 2) model the final loss of a model with N parameters
trained on D tokens as

    L(N, D) = E + A N^-a + B D^-b,

and Wen et al. (2025, "Fantastic Pretraining Optimizers and Where to Find
Them", arXiv 2509.02046) fit that law per optimizer to compare optimizers at
sizes beyond the ones trained. Given the reference optimizer's law, an
optimizer predicted to reach loss L_opt at (N*, D*) would have needed

    D_eff = (B_ref / (L_opt - E_ref - A_ref N*^-a_ref))^(1 / b_ref)

tokens of the reference at the same size, and its speedup is D_eff / D*
(+inf when L_opt lies at or below the reference's floor at N*, i.e. the
reference never gets there). Budgets are given as a Chinchilla multiple k:
D* = 20 k N* (Hoffmann et al.'s ~20 tokens per parameter).

The fit is least squares on the per-(N, D)-cell mean loss over seeds, with N and
D divided by their geometric means (so A and B are O(1) while fitting), bounds
0 < a, b <= 3, E >= 0, A, B > 0, from several starting points (the best is
kept). Five parameters need at least six cells, spread over at least two
sizes and two budgets; otherwise the fit is refused with the reason.

Intervals are a bootstrap: each replicate resamples the seeds within every
cell with replacement (or, when every cell has a single seed, resamples the
fit's residuals), refits every optimizer's law and recomputes the speedups;
the interval is the percentile range.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize

Cells = Mapping[tuple[float, float], Sequence[float]]   # (N, D) -> final loss per seed
MIN_CELLS = 6
TOKENS_PER_PARAM = 20.0
SEEDS, RESIDUALS = "seeds", "residuals"


@dataclasses.dataclass(frozen=True)
class JointLaw:
  """L(N, D) = E + A N^-a + B D^-b, with the fit's quality on its cell means."""
  E: float
  A: float
  a: float
  B: float
  b: float
  rmse: float
  r2: float
  cells: int

  def loss(self, params, tokens) -> np.ndarray:
    n = np.asarray(params, dtype=np.float64)
    d = np.asarray(tokens, dtype=np.float64)
    return self.E + self.A * n ** (-self.a) + self.B * d ** (-self.b)

  def floor(self, params: float) -> float:
    """The loss at infinite data for a model of ``params`` parameters: E + A N^-a."""
    return float(self.E + self.A * float(params) ** (-self.a))

  def effective_tokens(self, loss: float, params: float) -> float:
    """D_eff: the budget at which this law reaches ``loss`` at size ``params`` (inf below floor)."""
    if math.isnan(loss):
      return math.nan
    excess = loss - self.floor(params)
    if excess <= 0:
      return math.inf
    return float((self.B / excess) ** (1.0 / self.b))

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def cell_means(cells: Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(N, D, mean loss) over the cells with at least one finite loss."""
  keys, means = [], []
  for (n, d), losses in sorted(cells.items()):
    finite = [float(x) for x in losses if math.isfinite(x)]
    if finite:
      keys.append((float(n), float(d)))
      means.append(float(np.mean(finite)))
  if not keys:
    return np.zeros(0), np.zeros(0), np.zeros(0)
  n, d = np.asarray(keys).T
  return n, d, np.asarray(means)


def refusal(params: np.ndarray, tokens: np.ndarray) -> str | None:
  """Why the cells cannot support a five-parameter fit, or None when they can."""
  sizes, budgets = len(np.unique(params)), len(np.unique(tokens))
  if sizes < 2:
    return f"needs >= 2 distinct model sizes N, got {sizes}"
  if budgets < 2:
    return f"needs >= 2 distinct data budgets D, got {budgets}"
  if len(params) < MIN_CELLS:
    return f"needs >= {MIN_CELLS} (N, D) cells for 5 parameters, got {len(params)}"
  return None


def _starts(y: np.ndarray) -> list[np.ndarray]:
  """Starting points (E, A', a, B', b) in normalised units: E at two fractions of the lowest
  loss, a small grid over the exponents, the rest of the loss split evenly between the terms."""
  y_min = float(np.min(y))
  starts = []
  for e_frac, a, b in itertools.product((0.5, 0.9), (0.15, 0.4, 1.0), (0.15, 0.4, 1.0)):
    e = e_frac * y_min
    rest = max(y_min - e, 1e-3)
    starts.append(np.array([e, rest / 2, a, rest / 2, b]))
  return starts


def _fit_normalised(n: np.ndarray, d: np.ndarray, y: np.ndarray,
                    starts: Sequence[np.ndarray]) -> np.ndarray:
  def residuals(p):
    e, a_coef, a, b_coef, b = p
    return e + a_coef * n ** (-a) + b_coef * d ** (-b) - y
  lower = [0.0, 1e-12, 1e-6, 1e-12, 1e-6]
  upper = [np.inf, np.inf, 3.0, np.inf, 3.0]
  best, best_cost = None, math.inf
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    for p0 in starts:
      p0 = np.clip(p0, np.add(lower, 1e-9), np.subtract(upper, 1e-9))
      try:
        result = optimize.least_squares(residuals, p0, bounds=(lower, upper), method="trf",
                                        x_scale="jac", max_nfev=2000)
      except (ValueError, np.linalg.LinAlgError):
        continue
      if result.cost < best_cost:
        best, best_cost = result.x, result.cost
  if best is None:
    raise RuntimeError("the joint law did not converge from any starting point")
  return best


def fit(cells: Cells, start: JointLaw | None = None) -> JointLaw | str:
  """Least-squares fit of L(N, D) = E + A N^-a + B D^-b to the cells' mean losses.

  Args:
    cells: (N, D) -> the optimizer's final loss for each seed (non-finite losses
      are ignored; a cell with none is dropped).
    start: a law to start from instead of the grid of starting points (the
      bootstrap starts each replicate at the point estimate).

  Returns:
    The law, or a string saying why the cells cannot support the fit.
  """
  n, d, y = cell_means(cells)
  reason = refusal(n, d)
  if reason is not None:
    return reason
  n_scale, d_scale = float(np.exp(np.mean(np.log(n)))), float(np.exp(np.mean(np.log(d))))
  if start is None:
    starts = _starts(y)
  else:   # the same law in normalised units: A N^-a = (A n_scale^-a) (N / n_scale)^-a
    starts = [np.array([start.E, start.A * n_scale ** (-start.a), start.a,
                        start.B * d_scale ** (-start.b), start.b])]
  try:
    e, a_coef, a, b_coef, b = _fit_normalised(n / n_scale, d / d_scale, y, starts)
  except RuntimeError as error:
    return str(error)
  law = JointLaw(E=float(e), A=float(a_coef * n_scale ** a), a=float(a),
                 B=float(b_coef * d_scale ** b), b=float(b), rmse=0.0, r2=0.0, cells=len(y))
  residual = law.loss(n, d) - y
  total = float(np.sum((y - np.mean(y)) ** 2))
  return dataclasses.replace(
      law, rmse=float(np.sqrt(np.mean(residual ** 2))),
      r2=float(1 - np.sum(residual ** 2) / total) if total > 0 else 1.0)


def chinchilla_tokens(params: float, multiple: float) -> float:
  """D* = 20 k N*: the budget of ``multiple`` times Hoffmann et al.'s compute-optimal ratio."""
  return TOKENS_PER_PARAM * float(multiple) * float(params)


def speedup_at(law: JointLaw, reference: JointLaw, params: float, multiple: float) -> float:
  """D_eff / D* at (N*, D* = 20 k N*): the reference's tokens to match ``law``'s predicted loss."""
  tokens = chinchilla_tokens(params, multiple)
  predicted = float(law.loss(params, tokens))
  return reference.effective_tokens(predicted, params) / tokens


@dataclasses.dataclass(frozen=True)
class Extrapolation:
  """Speedups of every optimizer over the reference at the requested (N*, k) points."""
  estimates: dict[str, dict[tuple[float, float], tuple[float, float, float]]]  # (point, low, high)
  laws: dict[str, JointLaw]
  method: str                 # SEEDS or RESIDUALS
  replicates: int             # bootstrap replicates in which every law could be refitted


def _resample_seeds(cells: Cells, rng: np.random.Generator) -> dict:
  out = {}
  for key, losses in cells.items():
    finite = np.asarray([x for x in losses if math.isfinite(x)], dtype=np.float64)
    if finite.size:
      out[key] = rng.choice(finite, size=finite.size, replace=True)
  return out


def _resample_residuals(cells: Cells, law: JointLaw, rng: np.random.Generator) -> dict:
  n, d, y = cell_means(cells)
  fitted = law.loss(n, d)
  residuals = y - fitted
  draw = fitted + rng.choice(residuals, size=residuals.size, replace=True)
  return {(float(a), float(b)): [float(v)] for a, b, v in zip(n, d, draw)}


def _percentiles(samples: list[float], confidence: float) -> tuple[float, float]:
  tail = 100 * (1 - confidence) / 2
  values = np.asarray(samples, dtype=np.float64)
  values = values[~np.isnan(values)]
  if values.size == 0:
    return math.nan, math.nan
  # "lower"/"higher" pick observed replicates, so an infinite speedup stays inf, never nan.
  return (float(np.percentile(values, tail, method="lower")),
          float(np.percentile(values, 100 - tail, method="higher")))


def extrapolate(cells_by_optimizer: Mapping[str, Cells], reference: str,
                points: Sequence[tuple[float, float]], num_bootstrap: int = 1000,
                confidence: float = 0.95, seed: int = 0) -> Extrapolation | str:
  """Speedup over ``reference`` of every optimizer at each (N*, k) of ``points``, with intervals.

  Args:
    cells_by_optimizer: optimizer -> its cells (see :func:`fit`); must hold
      ``reference``. Optimizers whose law cannot be fitted are left out (fit
      them with :func:`fit` to learn why).
    reference: the optimizer whose law converts losses into tokens.
    points: (N*, k) pairs: model size and Chinchilla multiple (D* = 20 k N*).
    num_bootstrap: replicates; confidence: width of the percentile interval.

  Returns:
    The estimates, or a string saying why the reference's law cannot be fitted.
  """
  laws = {}
  for name, cells in cells_by_optimizer.items():
    law = fit(cells)
    if isinstance(law, JointLaw):
      laws[name] = law
  if reference not in laws:
    why = fit(cells_by_optimizer[reference]) if reference in cells_by_optimizer else "no cells"
    return f"the reference {reference}'s joint law cannot be fitted: {why}"
  multi_seed = any(sum(math.isfinite(x) for x in losses) >= 2
                   for name in laws for losses in cells_by_optimizer[name].values())
  method = SEEDS if multi_seed else RESIDUALS
  points = [(float(n), float(k)) for n, k in points]
  samples = {name: {p: [] for p in points} for name in laws}
  rng = np.random.default_rng(seed)
  replicates = 0
  for _ in range(num_bootstrap):
    refitted = {}
    for name, law in laws.items():
      cells = cells_by_optimizer[name]
      drawn = (_resample_seeds(cells, rng) if method == SEEDS
               else _resample_residuals(cells, law, rng))
      refit = fit(drawn, start=law)
      if not isinstance(refit, JointLaw):
        break
      refitted[name] = refit
    else:
      replicates += 1
      for name, law in refitted.items():
        for p in points:
          samples[name][p].append(speedup_at(law, refitted[reference], *p))
  estimates = {}
  for name, law in laws.items():
    estimates[name] = {}
    for p in points:
      low, high = _percentiles(samples[name][p], confidence)
      estimates[name][p] = (speedup_at(law, laws[reference], *p), low, high)
  return Extrapolation(estimates=estimates, laws=laws, method=method, replicates=replicates)


def winners(laws: Mapping[str, JointLaw], params: Sequence[float],
            multiples: Sequence[float]) -> list[tuple[float, float, str, float]]:
  """(N, k, optimizer, predicted loss) of the lowest predicted loss in every regime (N, 20 k N)."""
  out = []
  for n in sorted(set(float(p) for p in params)):
    for k in sorted(set(float(m) for m in multiples)):
      d = chinchilla_tokens(n, k)
      name, loss = min(((name, float(law.loss(n, d))) for name, law in laws.items()),
                       key=lambda item: item[1])
      out.append((n, k, name, loss))
  return out
