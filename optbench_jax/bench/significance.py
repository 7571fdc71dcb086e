"""Is the gap between adjacent optimizers in a ranking larger than the noise?

Semenov et al. (2025, "Benchmarking Optimizers for Large Language Model
Pretraining", arXiv 2509.01440) and Wen et al. (2025, arXiv 2509.02046) rank
optimizers by final loss; with few seeds, neighbours in that ranking are often
within run-to-run noise. For every cell (model, tokens, batch size) the
optimizers are ranked by mean final loss and each adjacent pair is called:

* both with >= 2 seeds: Welch's unequal-variance t-test (Welch 1947;
  ``scipy.stats.ttest_ind(equal_var=False)``), resolved when p < 0.05;
* otherwise: the seed noise sigma is the pooled standard deviation of the
  reference optimizer over the cells where it has repeats,

      sigma^2 = sum_i (n_i - 1) s_i^2 / sum_i (n_i - 1),

  and a gap below 2 sqrt(2) sigma (twice the standard deviation of the
  difference of two single runs) is unresolved;
* with no repeated runs anywhere, the noise is unknown and the pair is not called.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
RESOLVED, UNRESOLVED, NOISE_UNKNOWN = "resolved", "unresolved", "noise unknown"
TEST = ("Adjacent optimizers in each cell's ranking: Welch's t-test (unequal variances) on the "
        f"final losses when both have >= 2 seeds, resolved when p < {ALPHA}; otherwise the gap "
        "is resolved when it exceeds 2*sqrt(2)*sigma, sigma the pooled seed standard deviation "
        "of the reference optimizer's repeated runs ('noise unknown' without repeats).")


@dataclasses.dataclass(frozen=True)
class PairCall:
  cell: tuple[str, float, Any]     # (model, tokens, batch_size)
  better: str
  worse: str
  difference: float                # mean loss of worse - better (>= 0)
  p_value: float | None            # Welch's p, None when the noise band decided
  status: str


def pooled_noise(cells: Mapping[Any, Mapping[str, Sequence[float]]], reference: str) -> float | None:
  """Pooled seed standard deviation of ``reference`` over cells with >= 2 finite runs."""
  num, den = 0.0, 0
  for by_optimizer in cells.values():
    losses = [x for x in by_optimizer.get(reference, ()) if math.isfinite(x)]
    if len(losses) >= 2:
      num += (len(losses) - 1) * float(np.var(losses, ddof=1))
      den += len(losses) - 1
  return math.sqrt(num / den) if den else None


def call_pair(better: Sequence[float], worse: Sequence[float],
              noise: float | None) -> tuple[float | None, str]:
  """(p-value or None, status) for two optimizers' finite final losses (better first)."""
  gap = float(np.mean(worse) - np.mean(better))
  if len(better) >= 2 and len(worse) >= 2:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      p = float(stats.ttest_ind(better, worse, equal_var=False).pvalue)
    if not math.isnan(p):
      return p, RESOLVED if p < ALPHA else UNRESOLVED
    # Both without spread (identical seeds): no variance for the test; the band decides.
  if noise is None:
    return None, NOISE_UNKNOWN
  return None, RESOLVED if gap >= 2 * math.sqrt(2) * noise else UNRESOLVED


def significance(rows: Sequence[Mapping[str, Any]], reference: str) -> tuple[list[PairCall], float | None]:
  """Calls for every adjacent pair of every cell, and the noise sigma used (None: unknown).

  Args:
    rows: one dict per run: optimizer, model, tokens, batch_size, final_loss.
      Non-finite losses (diverged runs) are ignored; an optimizer without a
      finite run in a cell is left out of that cell's ranking.
    reference: the optimizer whose repeated runs measure the noise.
  """
  cells = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    if math.isfinite(r["final_loss"]):
      cells[(str(r["model"]), float(r["tokens"]), r.get("batch_size"))][r["optimizer"]].append(
          float(r["final_loss"]))
  noise = pooled_noise(cells, reference)
  calls = []
  for cell in sorted(cells, key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2])):
    ranked = sorted(cells[cell].items(), key=lambda item: (float(np.mean(item[1])), item[0]))
    for (a, la), (b, lb) in zip(ranked, ranked[1:]):
      p, status = call_pair(la, lb, noise)
      calls.append(PairCall(cell, a, b, float(np.mean(lb) - np.mean(la)), p, status))
  return calls, noise
