"""The optimizer of a run, built from ``config.optimizer`` through the registry.

``chain(clip_by_global_norm(grad_clip), create(name, learning_rate=schedule,
weight_decay=..., mask=..., batch_axes=..., **hparams))``. The weight-decay
mask skips embeddings, norms and biases (both studies); ``decay_embeddings``
also decays the embedding. ``mask``, ``batch_axes`` and the model's
``num_heads`` / ``num_kv_heads`` are passed only to factories that accept them. Unknown names / hyperparameters raise the
registry's errors, before anything is compiled.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax
import ml_collections
import optax
from absl import logging

from optbench_jax import models
from optbench_jax import optim as O
from optbench_jax.optim import labels as labels_lib
from optbench_jax.train.config_checks import ConfigError

# Optimizers whose update needs the Gauss-Newton-Bartlett gradient (Sophia-G).
HESSIAN_GRAD_OPTIMIZERS = ("sophia",)
SCHEDULE_FREE_OPTIMIZERS = ("schedule_free_adamw",)
DEFAULT_SOPHIA_INTERVAL = 10


class Optimizer(NamedTuple):
  tx: optax.GradientTransformationExtraArgs
  schedule: optax.Schedule
  needs_hessian_grads: bool
  hessian_interval: int
  schedule_free: bool


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """``config.optimizer.schedule`` over ``config.train.steps`` with peak ``learning_rate``."""
  s, peak, steps = config.optimizer.schedule, config.optimizer.learning_rate, config.train.steps
  if s.name == "constant":
    return O.schedules.create("constant", learning_rate=peak)
  available = dict(peak=peak, total_steps=steps, warmup_steps=s.warmup_steps,
                   final_fraction=s.final_fraction, decay_fraction=s.decay_fraction,
                   decay_shape=s.decay_shape)
  factories = {"linear": O.schedules.linear, "cosine": O.schedules.cosine,
               "paper_cosine": O.schedules.paper_cosine, "wsd": O.schedules.wsd}
  if s.name not in factories:
    raise ConfigError(f"config.optimizer.schedule.name must be one of "
                      f"{['constant', *factories]}, got {s.name!r}")
  accepted = inspect.signature(factories[s.name]).parameters
  try:
    return O.schedules.create(s.name, **{k: v for k, v in available.items() if k in accepted})
  except ValueError as e:
    raise ConfigError(f"config.optimizer.schedule: {e}") from None


def decay_mask(params: Any, batch_axes: Any, decay_embeddings: bool) -> Any:
  """True on decayed leaves: hidden matrices and an untied head (+ embeddings if asked)."""
  decayed = (labels_lib.MATRIX, labels_lib.HEAD)
  if decay_embeddings:
    decayed += (labels_lib.EMBEDDING,)
  return jax.tree.map(lambda label: label in decayed,
                      labels_lib.label_params(params, batch_axes))


def _known_elsewhere(name: str) -> set[str]:
  """Hyperparameter names accepted by some other registered optimizer."""
  known = set()
  for other in O.names():
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


def build(config: ml_collections.ConfigDict, params: Any, batch_axes: Any) -> Optimizer:
  """The run's optimizer; ``params`` may be abstract (ShapeDtypeStructs)."""
  o = config.optimizer
  hparams = dict(o.hparams.to_dict() if isinstance(o.hparams, ml_collections.ConfigDict)
                 else o.hparams)
  try:
    accepted = O.registry.hyperparameter_names(o.name)
  except ValueError as e:
    raise ConfigError(f"config.optimizer.name: {e}") from None
  hparams = select_hparams(o.name, hparams, accepted)
  schedule = make_schedule(config)
  kwargs = dict(learning_rate=schedule, weight_decay=o.weight_decay)
  if "mask" in accepted:
    kwargs["mask"] = decay_mask(params, batch_axes, o.decay_embeddings)
  if "batch_axes" in accepted:
    kwargs["batch_axes"] = batch_axes
  # Model structure some optimizers need (Adam-mini splits q/k projections per head).
  spec = models.ModelSpec.from_config(config.model)
  for key, value in (("num_heads", spec.num_heads), ("num_kv_heads", spec.num_kv_heads)):
    if key in accepted and key not in hparams:
      kwargs[key] = value
  # Sophia-G scales its estimate by the number of tokens the sampled-label loss
  # averages over: the whole global batch (the step accumulates over micro-batches).
  if o.name in HESSIAN_GRAD_OPTIMIZERS and "batch_size" in accepted and "batch_size" not in hparams:
    kwargs["batch_size"] = config.data.global_batch_size * config.data.seq_len
  clash = sorted(set(kwargs) & set(hparams))
  if clash:
    raise ConfigError(f"config.optimizer.hparams must not set {clash}: the trainer sets them "
                      f"from config.optimizer")
  try:
    tx = O.create(o.name, **kwargs, **hparams)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.optimizer ({o.name}): {e}") from None
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  needs_hessian = o.name in HESSIAN_GRAD_OPTIMIZERS
  interval = int(hparams.get("update_interval", DEFAULT_SOPHIA_INTERVAL))
  return Optimizer(tx=tx, schedule=schedule, needs_hessian_grads=needs_hessian,
                   hessian_interval=interval,
                   schedule_free=o.name in SCHEDULE_FREE_OPTIMIZERS)


def eval_params(optimizer: Optimizer, opt_state: Any, params: Any) -> Any:
  """The parameters to evaluate: schedule-free's averaged iterate x, else ``params``."""
  if optimizer.schedule_free:
    return O.schedule_free_eval_params(opt_state, params)
  return params
