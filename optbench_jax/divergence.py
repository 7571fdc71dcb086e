"""When a run counts as diverged: the one rule the trainer and the sweep both apply.

A training loss that is not finite has diverged at any step. Otherwise a loss
at or above a *limit* has diverged once the run is ``after_step`` steps in:

* the trainer stops a run whose loss exceeds ``2 ln(vocab_size)`` (worse than
  twice a uniform guess) from the first step -- :func:`healthy_limit` -- so no
  checkpoint is written after the run left its healthy range;
* a sweep applies the benchmark's loss threshold (Semenov et al. 2025 count a
  run as diverged when its loss stays above a threshold) from a step it
  chooses, on the trial's ``metrics.jsonl`` records.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def healthy_limit(vocab_size: int) -> float:
  """The trainer's limit: ``2 ln(vocab_size)``."""
  return 2.0 * math.log(vocab_size)


def _short(x: float) -> str:
  """``x`` as written when it has at most 4 significant digits (6.0), else rounded to 4."""
  return str(x) if float(f"{x:.4g}") == x else f"{x:.4g}"


def reason(loss: float, step: int, limit: float, after_step: int = 0,
           limit_name: str = "") -> str | None:
  """Why ``loss`` at ``step`` counts as diverged, or None."""
  if not math.isfinite(loss):
    return f"non-finite training loss ({loss}) at step {step}"
  if step >= after_step and loss >= limit:
    named = f" ({limit_name})" if limit_name else ""
    return f"training loss {loss:.4g} at step {step} is >= {_short(limit)}{named}"
  return None


def reason_in_records(records: Sequence[Mapping[str, Any]], limit: float,
                      after_step: int = 0, limit_name: str = "") -> str | None:
  """The first training-loss record of ``metrics.jsonl`` that counts as diverged, or None."""
  for record in records:
    if "loss" in record:
      why = reason(float(record["loss"]), int(record.get("step", 0)), limit, after_step,
                   limit_name)
      if why:
        return why
  return None
