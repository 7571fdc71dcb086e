"""Do the optimizers' rankings early in training predict the final ranking?

Wen et al. (2025, "Fantastic Pretraining Optimizers and Where to Find Them",
arXiv 2509.02046, Sec. 3) warn that loss curves of different optimizers cross
during training, so a ranking read off an intermediate checkpoint (or a short
run) can be reversed at the end. For each group of runs trained in the same
regime (model, Chinchilla multiple, batch size), this module averages every
optimizer's eval-loss curve over seeds, ranks the optimizers at each fraction
of training, and compares that ranking with the final one by Kendall's tau
(Kendall 1938; ``scipy.stats.kendalltau``, the tau-b variant, which accounts
for ties):

    tau = (concordant pairs - discordant pairs) / (number of pairs)   (no ties).

tau = 1 at every fraction means no two mean curves ever cross (a "rank flip"
is tau < 1 before the end). For each pair whose order before the end differs
from its final order, the crossing is reported at the fraction where the
difference of the two curves last changes sign (linear interpolation between
the two evaluations around it).

Curves evaluated at the same fractions are compared there; otherwise all are
interpolated linearly (in the fraction of training) onto the fractions of the
sparsest curve that lie within every curve's range.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

GroupKey = tuple[str, float, Any]        # (model, chinchilla, batch_size)


@dataclasses.dataclass(frozen=True)
class GroupFlips:
  """One regime's mean curves on a common grid, tau per fraction and the crossings."""
  key: GroupKey
  fractions: list[float]
  curves: dict[str, list[float]]         # optimizer -> mean eval loss at each fraction
  taus: list[float]                      # Kendall's tau vs the final ranking (nan: undefined)
  crossings: list[tuple[str, str, float]]   # (a, b, fraction of the last crossing)

  @property
  def flipped(self) -> bool:
    return any(t < 1 for t in self.taus[:-1] if not math.isnan(t))


def _seed_curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
  by_fraction = {}
  for fraction, loss in points:
    by_fraction[float(fraction)] = float(loss)
  fractions = np.asarray(sorted(by_fraction))
  return fractions, np.asarray([by_fraction[f] for f in fractions])


def common_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
  """The fractions every curve has, or else the sparsest curve's within every curve's range."""
  first = curves[0][0]
  if all(len(f) == len(first) and np.allclose(f, first) for f, _ in curves):
    return first
  low = max(float(f[0]) for f, _ in curves)
  high = min(float(f[-1]) for f, _ in curves)
  sparsest = min((f for f, _ in curves), key=len)
  grid = sparsest[(sparsest >= low - 1e-12) & (sparsest <= high + 1e-12)]
  return grid


def mean_curves(runs: Mapping[str, Mapping[Any, Sequence[tuple[float, float]]]]
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """optimizer -> seed -> [(fraction, loss)] to (grid, optimizer -> mean loss over seeds)."""
  seed_curves = {name: [_seed_curve(points) for points in seeds.values() if points]
                 for name, seeds in runs.items()}
  seed_curves = {name: c for name, c in seed_curves.items() if c}
  if not seed_curves:
    return np.zeros(0), {}
  grid = common_grid([c for curves in seed_curves.values() for c in curves])
  means = {name: np.mean([np.interp(grid, f, y) for f, y in curves], axis=0)
           for name, curves in seed_curves.items()}
  return grid, means


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    return math.nan
  with warnings.catch_warnings():   # a constant vector: tau undefined (nan)
    warnings.simplefilter("ignore")
    tau = float(stats.kendalltau(x, y).statistic)
  # A ratio of pair counts: scipy's float arithmetic leaves 1 - 1e-16 for identical rankings,
  # which must not read as a flip.
  return tau if math.isnan(tau) else round(tau, 12)


def last_crossing(grid: np.ndarray, diff: np.ndarray) -> float | None:
  """Fraction where ``diff`` (curve a - curve b) last takes the sign it ends with, or None."""
  final = np.sign(diff[-1])
  if final == 0:
    return None
  for i in range(len(diff) - 2, -1, -1):
    if np.sign(diff[i]) == -final:
      j = i + 1
      while np.sign(diff[j]) != final:   # step over exact ties to the first point past them
        j += 1
      x0, x1, y0, y1 = grid[i], grid[j], diff[i], diff[j]
      return float(x0 + (x1 - x0) * y0 / (y0 - y1))
  return None


def analyse_group(key: GroupKey, runs: Mapping[str, Mapping[Any, Sequence[tuple[float, float]]]]
                  ) -> GroupFlips | None:
  """Tau per fraction and crossings of one regime; None with fewer than 2 optimizers or points."""
  grid, means = mean_curves(runs)
  if len(means) < 2 or len(grid) < 2:
    return None
  names = sorted(means)
  matrix = np.stack([means[n] for n in names])      # optimizers x fractions
  taus = [_kendall(matrix[:, i], matrix[:, -1]) for i in range(len(grid))]
  crossings = []
  for a, b in itertools.combinations(range(len(names)), 2):
    fraction = last_crossing(grid, matrix[a] - matrix[b])
    if fraction is not None:
      crossings.append((names[a], names[b], fraction))
  return GroupFlips(key=key, fractions=[float(f) for f in grid],
                    curves={n: [float(x) for x in means[n]] for n in names},
                    taus=taus, crossings=crossings)


def rank_flips(curves: Sequence[Mapping[str, Any]]) -> list[GroupFlips]:
  """Every regime's :class:`GroupFlips`.

  Args:
    curves: one dict per evaluation: optimizer, model, chinchilla, batch_size,
      seed, fraction (of training, 0..1) and eval_loss.
  """
  groups = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
  for c in curves:
    key = (str(c["model"]), float(c["chinchilla"]), c.get("batch_size"))
    groups[key][c["optimizer"]][c.get("seed", 0)].append((c["fraction"], c["eval_loss"]))
  out = []
  for key in sorted(groups, key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2])):
    result = analyse_group(key, groups[key])
    if result is not None:
      out.append(result)
  return out
