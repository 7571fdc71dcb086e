"""A sweep's pre-flight of its trials: the trainer's own checks, before any trial runs.

:class:`TrialChecker` runs ``train.build`` (abstract: config, model, mesh,
batch split, optimizer construction with its real values, state shardings;
nothing allocated) on a trial config, and traces its train step
(``train.check``) once per trace signature -- the config up to float
hyperparameter values, steps and seeds, which change no shapes or code paths --
so a grid of learning rates costs one trace. The traced signatures belong to
the checker, one per sweep. :meth:`TrialChecker.check_grid` runs it on the grid
(the baseline and every single-value change, at every budget) before a sweep
starts, after the contract check of any optimizer from outside the package;
the runner checks every trial again right before it is launched (edge
extension and coordinate descent propose points not known in advance). Each
check raises one ``SweepConfigError`` with the trainer's message.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import ml_collections

from optbench_jax.bench import search_space, sweep_config
from optbench_jax.bench.sweep_config import SweepConfigError, _plain, grid_points, trial_config
from optbench_jax.optim import registry


def trace_signature(config: ml_collections.ConfigDict) -> str:
  """What the train step's trace depends on: everything but float hyperparameter values."""
  plain = _plain(config)
  plain["optimizer"]["hparams"] = {
      k: (type(v).__name__ if isinstance(v, float) else v)
      for k, v in plain["optimizer"]["hparams"].items()}
  for key in ("learning_rate", "weight_decay", "grad_clip"):
    plain["optimizer"][key] = None
  plain["train"] = plain["optimizer"]["schedule"] = plain["seed"] = None
  plain["data"]["shuffle_seed"] = None
  return json.dumps(plain, sort_keys=True, default=str)


def check_hosts(config: ml_collections.ConfigDict, hosts: int, where: str) -> None:
  """A trial of ``hosts`` processes needs a mesh that splits over them (the batch: build)."""
  from optbench_jax.train import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  sizes = [int(config.mesh[a]) for a in mesh_lib.AXES]
  if hosts > 1 and -1 not in sizes and math.prod(sizes) % hosts:
    shape = " x ".join(f"{a}={n}" for a, n in zip(mesh_lib.AXES, sizes))
    raise SweepConfigError(
        f"{where}: hosts_per_trial={hosts} does not match the trial's mesh {shape} "
        f"({math.prod(sizes)} devices cannot split evenly over {hosts} hosts)")


def check_contract(name: str, baseline: Mapping[str, Any]) -> None:
  """An optimizer from outside the package must pass the contract suite before any trial.

  All of ``optim.contract``'s checks but the timing; the sharded one only where this
  process has the 8 devices it needs.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from optbench_jax.optim import contract  # pylint: disable=import-outside-toplevel
  checks = [c for c in contract.FAST
            if c != "sharded_equals_unsharded" or jax.device_count() >= 8]
  hparams = {k: v for k, v in baseline.items() if k not in search_space.TRAINER_KEYS}
  failed = [r for r in contract.run_checks(registry.factory(name), hparams, checks)
            if not r.passed]
  if failed:
    raise SweepConfigError(
        f"optimizers.{name} fails the optimizer contract (python -m optbench_jax.optim.check "
        f"{name}): " + contract.failure_summary(failed))


class TrialChecker:
  """The trainer's checks of trial configs, remembering which trace signatures it traced."""

  def __init__(self):
    self.traced: set[str] = set()

  def check(self, config: ml_collections.ConfigDict, where: str, hosts: int = 1) -> None:
    """The trainer's own checks on one trial config; raises SweepConfigError with its message."""
    from optbench_jax import train   # pylint: disable=import-outside-toplevel  (jax, models)
    check_hosts(config, hosts, where)
    signature = trace_signature(config)
    try:
      if signature in self.traced:
        train.build(config, abstract=True, process_count=hosts)
      else:
        train.check(config, process_count=hosts)
        self.traced.add(signature)
    except train.ConfigError as e:
      raise SweepConfigError(f"{where}: the trainer rejects this trial: {e}") from None

  def check_grid(self, plain: Mapping[str, Any], base: ml_collections.ConfigDict) -> None:
    """The contract of every optimizer from outside the package, then :meth:`check` on every
    grid point at every budget (``plain``: a validated sweep)."""
    for name, spec in plain["optimizers"].items():
      optimizer = sweep_config.registry_name(name, spec)
      if optimizer not in registry.builtin_names():
        check_contract(optimizer, spec["baseline"])
      for budget in plain["budgets"]:
        for point in grid_points(spec["grid"], spec["baseline"]):
          config = trial_config(plain, base, name, point, budget, plain["seeds"][0])
          self.check(config, f"optimizers.{name} at {point}, {budget} steps",
                     plain["hosts_per_trial"])
