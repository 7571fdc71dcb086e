"""Validation of optimizer hyperparameters at construction time.

Every factory in :mod:`optbench_jax.optim` calls these before building its
transformation, so an impossible value fails immediately with a message naming
the argument, long before anything is traced or compiled.

Values that are traced (``optax.inject_hyperparams`` rebuilds the optimizer
inside ``update`` with tracers) or callables (schedules) cannot be inspected and
are passed through; schedules validate their own arguments in
:mod:`optbench_jax.optim.schedules`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def _concrete_float(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None if it cannot be inspected."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  if array.size != 1:
    return None
  return float(array.reshape(()))


def check_learning_rate(name: str, value: Any) -> None:
  """Learning rates must be finite and non-negative (a schedule passes through)."""
  x = _concrete_float(value)
  if x is not None and (math.isnan(x) or math.isinf(x) or x < 0):
    raise ValueError(f"{name} must be a finite number >= 0 or a schedule, got {value!r}")


def check_beta(name: str, value: Any) -> None:
  """Momentum / EMA coefficients must lie in [0, 1)."""
  x = _concrete_float(value)
  if x is not None and not 0.0 <= x < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_positive(name: str, value: Any) -> None:
  """Strictly positive, finite (eps, rho, d0, ...)."""
  x = _concrete_float(value)
  if x is not None and not (x > 0 and math.isfinite(x)):
    raise ValueError(f"{name} must be > 0 and finite, got {value!r}")


def check_fraction(name: str, value: Any) -> None:
  """A share in (0, 1] (e.g. Dion's ``rank_fraction``)."""
  x = _concrete_float(value)
  if x is not None and not 0.0 < x <= 1.0:
    raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def check_non_negative(name: str, value: Any) -> None:
  """Non-negative, finite (weight decay, gamma, alpha, warmup lengths, ...)."""
  x = _concrete_float(value)
  if x is not None and not (x >= 0 and math.isfinite(x)):
    raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")


def check_int_at_least(name: str, value: Any, minimum: int) -> None:
  """Integer counts such as ``ns_steps`` or ``precondition_frequency``.

  Integer scalar arrays (what ``optax.inject_hyperparams`` passes) are checked
  by value; tracers cannot be inspected and pass through.
  """
  if isinstance(value, jax.core.Tracer):
    return
  if (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0
      and np.issubdtype(value.dtype, np.integer)):
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  """A string option among a fixed set."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
