"""The run's optimizer, built from ``config.optimizer`` through the registry.

``chain(clip_by_global_norm(grad_clip), create(name, **trainer_args, **hparams))``.
Which factory arguments the trainer fills in, and how every learning rate
follows the run's schedule, is stated once in :mod:`optimizer_args` (the
table and the learning-rate rule). Unknown names / hyperparameters raise the
registry's errors as a :class:`ConfigError`, before anything is compiled.

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
from typing import Any, NamedTuple

import ml_collections
import optax
from absl import logging

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax.train import optimizer_args
from optbench_jax.train.config_checks import ConfigError

SCHEDULES = ("constant", "linear", "cosine", "paper_cosine", "wsd")


class Optimizer(NamedTuple):
  tx: optax.GradientTransformationExtraArgs
  schedule: optax.Schedule        # the shape every learning rate follows, at learning_rate's peak
  learning_rates: dict            # learning-rate argument -> its configured peak (None: factory's)


def make_schedule(config: ml_collections.ConfigDict, peak: float | None = None) -> optax.Schedule:
  """``config.optimizer.schedule`` over ``config.train.steps``, peaking at ``peak``.

  ``peak`` defaults to ``config.optimizer.learning_rate``; every learning
  rate of the run uses the same shape with its own peak.
  """
  s, steps = config.optimizer.schedule, config.train.steps
  peak = config.optimizer.learning_rate if peak is None else peak
  if s.name not in SCHEDULES:
    raise ConfigError(f"config.optimizer.schedule.name must be one of {list(SCHEDULES)}, "
                      f"got {s.name!r}")
  available = dict(peak=peak, learning_rate=peak, total_steps=steps,
                   warmup_steps=s.warmup_steps, final_fraction=s.final_fraction,
                   decay_fraction=s.decay_fraction, decay_shape=s.decay_shape)
  factory = getattr(O.schedules, s.name)
  accepted = inspect.signature(factory).parameters
  try:
    if s.name == "constant" and s.warmup_steps > steps:
      raise ValueError(f"warmup_steps ({s.warmup_steps}) is longer than the run "
                       f"(train.steps={steps})")
    return factory(**{k: v for k, v in available.items() if k in accepted})
  except ValueError as e:
    raise ConfigError(f"config.optimizer.schedule: {e}") from None


def _known_elsewhere(name: str) -> set[str]:
  """Hyperparameter names accepted by some other registered optimizer."""
  known = set()
  for other in O.registry.builtin_names():
    if other != name:
      try:
        known.update(O.registry.hyperparameter_names(other))
      except Exception:  # pylint: disable=broad-except  (a factory not yet importable)
        pass
  return known


def select_hparams(name: str, hparams: dict, accepted: list[str]) -> dict:
  """``hparams`` for optimizer ``name``.

  A preset's hparams belong to its optimizer (``configs/124m.py`` sets AdamW's
  b1, b2). Overriding only ``--config.optimizer.name=muon`` must still work,
  so keys that ``name`` does not accept but another registered optimizer does
  are dropped with a warning; a key no optimizer accepts is a typo and reaches
  the registry, which names it.
  """
  foreign = sorted(k for k in hparams if k not in accepted and k in _known_elsewhere(name))
  if foreign:
    logging.warning("optimizer %r does not take hparams %s (set for another optimizer); "
                    "ignoring them", name, foreign)
  return {k: v for k, v in hparams.items() if k not in foreign}


def _learning_rates(config, signature, hparams: dict, owns_warmup: bool
                    ) -> tuple[dict, dict]:
  """(kwargs, peaks): every learning-rate argument as the run's schedule at its own peak."""
  kwargs, peaks = {}, {}
  for name, parameter in signature.parameters.items():
    if not optimizer_args.is_learning_rate(name):
      continue
    if name == "learning_rate":
      peak = config.optimizer.learning_rate
    elif name in hparams:
      peak = hparams[name]
    else:
      peak = None if parameter.default is inspect.Parameter.empty else parameter.default
    peaks[name] = peak
    if peak is None:
      continue            # the factory's own meaning (e.g. "same as learning_rate")
    if isinstance(peak, bool) or not isinstance(peak, (int, float)):
      raise ConfigError(f"config.optimizer.hparams.{name} must be a number (its peak; the "
                        f"trainer applies the run's schedule), got {peak!r}")
    kwargs[name] = float(peak) if owns_warmup else make_schedule(config, float(peak))
  return kwargs, peaks


def build(config: ml_collections.ConfigDict, params: Any, batch_axes: Any) -> Optimizer:
  """The run's optimizer; ``params`` may be abstract (ShapeDtypeStructs)."""
  o = config.optimizer
  hparams = dict(o.hparams.to_dict() if isinstance(o.hparams, ml_collections.ConfigDict)
                 else o.hparams)
  try:
    accepted = O.registry.hyperparameter_names(o.name)
    signature = inspect.signature(O.registry.factory(o.name))
  except ValueError as e:
    raise ConfigError(f"config.optimizer.name: {e}") from None
  hparams = select_hparams(o.name, hparams, accepted)
  owned = optimizer_args.trainer_owned(accepted)
  clash = sorted(set(owned) & set(hparams))
  if clash:
    sources = "; ".join(f"{k}: {optimizer_args.BY_NAME[k].source}" for k in clash)
    raise ConfigError(f"config.optimizer.hparams must not set {clash}: the trainer sets them "
                      f"({sources})")
  owns_warmup = optimizer_args.owns_warmup(accepted)
  if owns_warmup and o.schedule.name != "constant":
    raise ConfigError(
        f"optimizer {o.name!r} applies its own warmup (warmup_steps) and runs without a decay "
        f"schedule; set config.optimizer.schedule.name='constant' (got {o.schedule.name!r})")
  schedule = make_schedule(config)
  context = optimizer_args.Context(config=config, params=params, batch_axes=batch_axes,
                                   model=models.ModelSpec.from_config(config.model))
  kwargs = {name: optimizer_args.BY_NAME[name].value(context)
            for name in owned if optimizer_args.BY_NAME[name].value is not None}
  rates, peaks = _learning_rates(config, signature, hparams, owns_warmup)
  kwargs.update(rates)
  extra = {k: v for k, v in hparams.items() if k not in rates}
  try:
    tx = O.create(o.name, **kwargs, **extra)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.optimizer ({o.name}): {e}") from None
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return Optimizer(tx=tx, schedule=schedule, learning_rates=peaks)


def eval_params(opt_state: Any, params: Any) -> Any:
  """The parameters to evaluate with (the optimizer state's ``eval_params`` hook, else params)."""
  return O.eval_params(opt_state, params)
