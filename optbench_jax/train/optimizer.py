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

from typing import Any, NamedTuple

import ml_collections
import optax

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax.config import ConfigError
from optbench_jax.optim import factory_contract
from optbench_jax.train import optimizer_args

SCHEDULES = tuple(O.schedules.SCHEDULES)


class Optimizer(NamedTuple):
  tx: optax.GradientTransformationExtraArgs
  schedule: optax.Schedule        # the shape every learning rate follows, at learning_rate's peak
  learning_rates: dict            # learning-rate argument -> its configured peak (None: factory's)


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
  try:
    bound = factory_contract.bind(o.name, hparams, learning_rate=o.learning_rate,
                                  schedule=schedule_spec(config),
                                  trainer_values=optimizer_args.values(context))
  except factory_contract.BindError as e:
    raise ConfigError(f"config.optimizer ({o.name}): {e}") from None
  tx = bound.tx
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return Optimizer(tx=tx, schedule=schedule, learning_rates=bound.learning_rates)


def eval_params(opt_state: Any, params: Any) -> Any:
  """The parameters to evaluate with (the optimizer state's ``eval_params`` hook, else params)."""
  return O.eval_params(opt_state, params)
