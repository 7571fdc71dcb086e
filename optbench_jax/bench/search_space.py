"""Search spaces: per-hyperparameter grids, their expansion, and where each lands in a config.

A search space is a mapping ``hyperparameter name -> tuple of values`` plus a
*baseline* point (the starting point of coordinate descent, and the fixed
value of anything not swept). Grids are built with :func:`log_grid` (learning
rates, weight decay, 1 - beta) or :func:`linear_grid`, or written out.

Trial hyperparameters are flat names; :func:`config_key` says where each goes
in the trainer config (``optbench_jax/config.py``). Which names are the trainer's
is read from the one table, ``train/optimizer_args.py``:

  learning_rate, weight_decay, grad_clip -> optimizer.<name>
  warmup_steps                           -> optimizer.schedule.warmup_steps
  anything else                          -> optimizer.hparams.<name>, checked
                                            against the optimizer's factory
  hparams/<name>                         -> optimizer.hparams.<name> (for a factory
                                            argument that shares a trainer key's
                                            name but is not trainer-owned)

A factory argument the trainer fills in (``mask``, ``batch_axes``, the head
counts, Sophia's ``batch_size``, ...) can never be swept. A secondary learning
rate (``adam_learning_rate``) is swept by its peak; the trainer applies the
run's schedule to it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from optbench_jax.optim import registry
from optbench_jax.train import optimizer_args

# Trainer-level hyperparameters and where they live in the config.
TRAINER_KEYS = optimizer_args.sweepable_config_keys()
# Factory arguments the trainer fills in itself; a sweep sets none of them as an hparam.
TRAINER_OWNED = tuple(arg.name for arg in optimizer_args.TRAINER_ARGS)
HPARAMS_PREFIX = "hparams/"   # "/" as ConfigDict keys may not contain dots


class SearchSpaceError(ValueError):
  """A search space names something that does not exist or cannot be swept."""


def _round_sig(x: float, digits: int = 4) -> float:
  # Rounded so trial ids and report tables read 0.003162, not 0.0031622776601683794.
  return float(f"{x:.{digits}g}")


def log_grid(low: float, high: float, num: int, digits: int = 4) -> tuple[float, ...]:
  """``num`` log-spaced values from ``low`` to ``high`` inclusive, rounded to ``digits``."""
  if not (low > 0 and high > 0):
    raise SearchSpaceError(f"log_grid needs positive bounds, got {low}, {high}")
  if num < 1:
    raise SearchSpaceError(f"log_grid needs num >= 1, got {num}")
  values = np.geomspace(low, high, num) if num > 1 else np.array([low])
  return tuple(_round_sig(float(v), digits) for v in values)


def linear_grid(low: float, high: float, num: int, digits: int = 6) -> tuple[float, ...]:
  """``num`` evenly spaced values from ``low`` to ``high`` inclusive."""
  if num < 1:
    raise SearchSpaceError(f"linear_grid needs num >= 1, got {num}")
  values = np.linspace(low, high, num) if num > 1 else np.array([low])
  return tuple(_round_sig(float(v), digits) for v in values)


def numeric_values(values: Sequence[Any]) -> list[Any]:
  """The numbers of a grid (not bools, strings or None)."""
  return [v for v in values if v is not None and not isinstance(v, (bool, str))]


def extend_grid(values: Sequence[Any], side: str) -> float | int | None:
  """The next value beyond one edge of a numeric grid (edge extension).

  Continues the spacing at that edge: geometric (ratio of the two edge values)
  when the grid is positive, else arithmetic; integer grids stay integers.
  ``side`` is ``"low"`` or ``"high"``. None when the step would reach or cross
  zero (e.g. below a weight-decay grid that starts at 0).
  """
  numbers = sorted(numeric_values(values))
  if len(numbers) < 2:
    raise SearchSpaceError(f"edge extension needs >= 2 numeric grid values, got {list(values)}")
  edge, inner = (numbers[-1], numbers[-2]) if side == "high" else (numbers[0], numbers[1])
  if numbers[0] > 0:
    value = edge * (edge / inner)
  else:
    value = edge + (edge - inner)
    if edge == 0 or (value > 0) != (edge > 0):
      return None       # never across zero: a sign change is another kind of setting
  if all(isinstance(v, int) for v in numbers):
    value = int(round(value))
    if value == edge:
      value = edge + (1 if side == "high" else -1)
    return value
  return _round_sig(value)


def config_key(name: str) -> str:
  """The dotted trainer-config key a trial hyperparameter sets."""
  if name.startswith(HPARAMS_PREFIX):
    return f"optimizer.hparams.{name[len(HPARAMS_PREFIX):]}"
  return TRAINER_KEYS.get(name, f"optimizer.hparams.{name}")


def expand_grid(grid: Mapping[str, Sequence[Any]],
                baseline: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
  """Every combination of the grid's values, each on top of ``baseline``.

  Order is deterministic: hyperparameters in sorted name order, values in the
  order given, the last name varying fastest.
  """
  names = sorted(grid)
  for name in names:
    if len(grid[name]) == 0:
      raise SearchSpaceError(f"hyperparameter {name!r} has an empty grid")
  points = []
  for values in itertools.product(*(grid[name] for name in names)):
    point = dict(baseline or {})
    point.update(zip(names, values))
    points.append(point)
  return points


def _is_scalar(value: Any) -> bool:
  """A finite number, a bool, a string, or None (an optimizer's "derive it" setting)."""
  if value is None:
    return True
  return isinstance(value, (bool, int, float, str)) and not (
      isinstance(value, float) and not math.isfinite(value))


def validate(optimizer: str, grid: Mapping[str, Sequence[Any]],
             baseline: Mapping[str, Any]) -> None:
  """Checks an optimizer's search space against the registry; raises SearchSpaceError.

  Checks: the optimizer is registered and importable; every swept or baseline
  name is a trainer key or an argument of the optimizer's factory (and not one
  the trainer sets itself); the grid is non-empty, each hyperparameter has at
  least one value, and every value is a finite scalar (or None).
  """
  try:
    valid = set(registry.hyperparameter_names(optimizer))
  except ValueError as e:           # unknown name: the registry's message names close matches
    raise SearchSpaceError(str(e)) from None
  except ImportError as e:
    raise SearchSpaceError(
        f"optimizer {optimizer!r} is registered but its module failed to import: {e}") from e
  allowed = (valid - set(TRAINER_OWNED)) | set(TRAINER_KEYS)
  if not grid:
    raise SearchSpaceError(f"optimizer {optimizer!r}: empty search space (no hyperparameters)")
  for source, names in (("grid", grid), ("baseline", baseline)):
    for name in names:
      if name.startswith(HPARAMS_PREFIX) and name[len(HPARAMS_PREFIX):] in valid - set(TRAINER_OWNED):
        continue
      if name in valid and name in TRAINER_OWNED and name not in TRAINER_KEYS:
        raise SearchSpaceError(
            f"optimizer {optimizer!r}: {name!r} in its {source} is set by the trainer "
            f"({optimizer_args.BY_NAME[name].source}); remove it")
      if name not in allowed:
        raise SearchSpaceError(
            f"optimizer {optimizer!r}: unknown hyperparameter {name!r} in its {source}; "
            f"valid: {', '.join(sorted(allowed))}")
  for name, values in grid.items():
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
      raise SearchSpaceError(
          f"optimizer {optimizer!r}: grid for {name!r} must be a list of values, got {values!r}")
    if len(values) == 0:
      raise SearchSpaceError(f"optimizer {optimizer!r}: hyperparameter {name!r} has an empty grid")
    if len(set(values)) != len(values):
      raise SearchSpaceError(f"optimizer {optimizer!r}: grid for {name!r} repeats values {values}")
    for value in values:
      if not _is_scalar(value):
        raise SearchSpaceError(
            f"optimizer {optimizer!r}: grid value {value!r} for {name!r} is not a finite scalar "
            "or None")
  for name, value in baseline.items():
    if not _is_scalar(value):
      raise SearchSpaceError(
          f"optimizer {optimizer!r}: baseline value {value!r} for {name!r} is not a finite scalar "
          "or None")


def validate_edge_extension(optimizer: str, grid: Mapping[str, Sequence[Any]],
                            edge_extension: Mapping[str, int]) -> None:
  """Edge extension needs numeric grids; a grid of one value (no spacing) is left as is."""
  for name, limit in edge_extension.items():
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
      raise SearchSpaceError(f"edge_extension[{name!r}] must be an integer >= 0, got {limit!r}")
    if name not in grid or len(grid[name]) < 2:
      continue          # not swept, or a fixed value: nothing to extend
    if len(numeric_values(grid[name])) != len(grid[name]):
      raise SearchSpaceError(
          f"optimizer {optimizer!r}: edge_extension names {name!r}, whose grid "
          f"{list(grid[name])} is not all numbers")
