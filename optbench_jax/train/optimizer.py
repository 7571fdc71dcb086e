"""The run's optimizer: ``config.optimizer`` bound to its factory by the optimizer library.

``chain(clip_by_global_norm(grad_clip), bind(name, hparams, schedule, trainer values))``.
The factory contract and the learning-rate rule are the library's
(``optim/factory_contract.py``); the trainer supplies the run's schedule
(:func:`schedule_spec`) and its values for the trainer-owned arguments
(``optimizer_args``). Errors come back as one :class:`ConfigError` naming the
key, before anything is compiled.

What an optimizer needs from the train step it asks for through its own
interface, never by name: the step passes every optimizer
``hessian_grads_fn`` (sampled-label gradients, computed only if the
optimizer calls it: Sophia-G does, inside its refresh ``cond``) and
``obj_fn`` (the batch loss as a function of the parameters: Sophia-H's
Hessian-vector products); evaluation parameters come from the
``eval_params`` hook of the optimizer's state (:func:`optim.eval_params`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax.config import ConfigError
from optbench_jax.optim import factory_contract
from optbench_jax.optim import width_rules
from optbench_jax.train import optimizer_args

SCHEDULES = tuple(O.schedules.SCHEDULES)


class Optimizer(NamedTuple):
  tx: optax.GradientTransformationExtraArgs
  schedule: optax.Schedule        # the shape every learning rate follows, at learning_rate's peak
  learning_rates: dict            # learning-rate argument -> its configured peak (None: factory's)
  width_rule: str | None = None   # the scaling rule applied per parameter (width_rules), if any


def schedule_spec(config: ml_collections.ConfigDict) -> O.schedules.Spec:
  """``config.optimizer.schedule`` over ``config.train.steps``."""
  s = config.optimizer.schedule
  if s.name not in SCHEDULES:
    raise ConfigError(f"config.optimizer.schedule.name must be one of {list(SCHEDULES)}, "
                      f"got {s.name!r}")
  return O.schedules.Spec(name=s.name, total_steps=config.train.steps,
                          warmup_steps=s.warmup_steps, final_fraction=s.final_fraction,
                          decay_fraction=s.decay_fraction, decay_shape=s.decay_shape)


def make_schedule(config: ml_collections.ConfigDict, peak: float | None = None) -> optax.Schedule:
  """The run's schedule peaking at ``peak`` (default ``config.optimizer.learning_rate``)."""
  try:
    return schedule_spec(config).at(config.optimizer.learning_rate if peak is None else peak)
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"config.optimizer.schedule: {e}") from None


def build(config: ml_collections.ConfigDict, params: Any, batch_axes: Any,
          model_spec: models.ModelSpec) -> Optimizer:
  """The run's optimizer; ``params`` may be abstract (ShapeDtypeStructs)."""
  o = config.optimizer
  hparams = dict(o.hparams.to_dict() if isinstance(o.hparams, ml_collections.ConfigDict)
                 else o.hparams)
  schedule = make_schedule(config)
  context = optimizer_args.Context(config=config, params=params, batch_axes=batch_axes,
                                   model=model_spec)
  trainer_values = optimizer_args.values(context)
  scaling = _width_scaling(config, hparams, model_spec)
  if scaling is not None and scaling.decays is not None:
    # Independent decay replaces the factory's own: it runs with none.
    trainer_values = dict(trainer_values, weight_decay=lambda: 0.0)
    hparams.update({arg: 0.0 for arg in scaling.rules.decay_args[1:]
                    if arg != "weight_decay" and arg in scaling.accepted})
  try:
    bound = factory_contract.bind(o.name, hparams, learning_rate=o.learning_rate,
                                  schedule=schedule_spec(config),
                                  trainer_values=trainer_values)
  except factory_contract.BindError as e:
    raise ConfigError(f"config.optimizer ({o.name}): {e}") from None
  tx = bound.tx
  if scaling is not None:
    geometry = models.parametrization.geometry(config.model)
    factors = width_rules.multipliers(scaling.rules, scaling.option, geometry,
                                      scaling.hparams)
    tx = optax.chain(tx, width_rules.scale_by_multipliers(factors))
    if scaling.decays is not None:
      hidden, other = scaling.decays
      decay = width_rules.independent_decay(geometry, trainer_values["mask"](),
                                            hidden, other)
      tx = optax.chain(tx, width_rules.add_independent_decay(schedule, decay))
    logging.getLogger(__name__).info(
        "learning-rate scaling: %s rule %r, hidden-matrix multipliers %s%s", scaling.rules.name,
        scaling.option, sorted({round(f, 4) for f in jax.tree.leaves(factors)}),
        ", independent weight decay" if scaling.decays is not None else "")
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return Optimizer(tx=tx, schedule=schedule, learning_rates=bound.learning_rates,
                   width_rule=None if scaling is None else f"{scaling.rules.name}:{scaling.option}")


class _Scaling(NamedTuple):
  rules: width_rules.Rules
  option: str
  hparams: dict                   # the factory's defaults overlaid with the run's hparams
  accepted: list                  # the factory's arguments
  decays: tuple | None            # (hidden, other) independent decays, None when decoupled


def _width_scaling(config: ml_collections.ConfigDict, hparams: dict,
                   model_spec: models.ModelSpec) -> _Scaling | None:
  """The run's scaling rule (None: none applies), or one ConfigError naming the setting."""
  o = config.optimizer
  try:
    factory = O.registry.factory(o.name)
  except ValueError as e:
    raise ConfigError(f"config.optimizer.name: {e}") from None
  rules = width_rules.rules_of(factory)
  try:
    option = width_rules.resolve_option(o.name, rules, o.lr_scaling, model_spec.parametrization)
  except width_rules.RuleError as e:
    raise ConfigError(f"config.optimizer.lr_scaling: {e}") from None
  independent = o.weight_decay_scaling == "independent"
  if independent and model_spec.parametrization == "standard":
    raise ConfigError("config.optimizer.weight_decay_scaling='independent' scales the decay as "
                      "base_width / d_model, which only model.parametrization 'mup' or "
                      "'completep' defines")
  if option is None and not independent:
    return None
  if option is None:
    raise ConfigError("config.optimizer.weight_decay_scaling='independent' needs a learning-"
                      "rate rule (optimizer.lr_scaling 'auto' or a rule name, not 'none')")
  if independent and not rules.decay_args:
    raise ConfigError(f"config.optimizer.weight_decay_scaling='independent': optimizer "
                      f"{o.name!r} ({rules.name}) has no weight decay to make independent")
  parameters = inspect.signature(factory).parameters
  defaults = {k: p.default for k, p in parameters.items()
              if p.default is not inspect.Parameter.empty}
  merged = dict(defaults, **hparams)
  decays = None
  if independent:
    hidden = o.weight_decay
    other_arg = rules.decay_args[-1]
    other = hidden if other_arg == "weight_decay" else merged.get(other_arg)
    decays = (float(hidden), float(hidden if other is None else other))
  return _Scaling(rules, option, merged, list(parameters), decays)


def eval_params(opt_state: Any, params: Any) -> Any:
  """The parameters to evaluate with (the optimizer state's ``eval_params`` hook, else params)."""
  return O.eval_params(opt_state, params)
