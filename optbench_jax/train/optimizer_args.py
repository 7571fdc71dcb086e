"""The one table of optimizer arguments the trainer owns, and the learning-rate rule.

An optimizer factory (registered, or a user's) is called with keyword
arguments. Some of them are not hyperparameters a user tunes in
``config.optimizer.hparams`` but facts of the run, which the trainer fills in
whenever the factory's signature accepts them. :data:`TRAINER_ARGS` lists them;
the trainer (``train/optimizer.py``), a sweep's search space
(``bench/search_space.py``) and a sweep's pre-flight all read this table, and
nothing else names optimizers for special cases.

**The learning-rate rule** (Semenov et al. 2025's code: one LambdaLR /
OneCycleLR scheduler, or its CombinedScheduler for Muon, multiplies the
learning rate of every parameter group). Every factory argument that is a
*parameter* learning rate -- ``learning_rate``, any ``*_learning_rate``
(Muon's ``adam_learning_rate``) and any ``learning_rate_*`` (MARS's
``learning_rate_1d``) -- follows the run's one schedule
(``config.optimizer.schedule``) with the same shape, scaled to its own peak:

    lr_arg(t) = schedule(t) / schedule_peak * peak_arg

with ``peak_arg`` the value configured for that argument
(``config.optimizer.learning_rate`` for ``learning_rate``, the ``hparams`` value
or the factory's default for the others; ``None`` keeps the factory's meaning,
e.g. "same as learning_rate"). The constant schedule honours ``warmup_steps``
(linear from 0). Rates that are not parameter learning rates must be named
otherwise (Kron's ``preconditioner_lr`` is the preconditioner fit's step size,
constant in the PSGD reference) and are passed through unchanged.

**Optimizers that own their warmup.** A factory that accepts ``warmup_steps``
(schedule-free AdamW, Defazio et al. 2024) applies the warmup itself, as its
method prescribes, and runs without a decay schedule: it gets
``warmup_steps = config.optimizer.schedule.warmup_steps`` and every learning
rate as its constant peak, and any schedule but ``constant`` is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections

from optbench_jax import models
from optbench_jax.optim import labels as labels_lib


@dataclasses.dataclass(frozen=True)
class Context:
  """What the trainer knows when it builds the optimizer."""
  config: ml_collections.ConfigDict
  params: Any               # abstract (ShapeDtypeStruct) parameters
  batch_axes: Any           # models.param_batch_axes(params)
  model: models.ModelSpec


@dataclasses.dataclass(frozen=True)
class TrainerArg:
  """One factory argument the trainer fills in.

  ``config_key``: the trainer-config key a user or sweep sets it through (None:
  derived from the run, never set by hand). ``value``: ``Context -> value``
  (None for ``learning_rate``, which the schedule builder fills in).
  """
  name: str
  source: str
  config_key: str | None
  value: Callable[[Context], Any] | None


def decay_mask(params: Any, batch_axes: Any, decay_embeddings: bool) -> Any:
  """True on decayed leaves: hidden matrices and an untied head (+ embeddings if asked).

  Both studies: no weight decay on embeddings, norms and biases.
  """
  decayed = (labels_lib.MATRIX, labels_lib.HEAD)
  if decay_embeddings:
    decayed += (labels_lib.EMBEDDING,)
  return jax.tree.map(lambda label: label in decayed,
                      labels_lib.label_params(params, batch_axes))


TRAINER_ARGS: tuple[TrainerArg, ...] = (
    TrainerArg("learning_rate", "config.optimizer.learning_rate (peak) shaped by "
               "config.optimizer.schedule", "optimizer.learning_rate", None),
    TrainerArg("weight_decay", "config.optimizer.weight_decay (decoupled, x lr)",
               "optimizer.weight_decay", lambda c: c.config.optimizer.weight_decay),
    TrainerArg("mask", "weight-decay mask: hidden matrices and an untied head "
               "(+ embeddings with optimizer.decay_embeddings)", None,
               lambda c: decay_mask(c.params, c.batch_axes, c.config.optimizer.decay_embeddings)),
    TrainerArg("batch_axes", "leading stacked-layer / expert axes of every parameter", None,
               lambda c: c.batch_axes),
    TrainerArg("num_heads", "config.model.num_heads", None, lambda c: c.model.num_heads),
    TrainerArg("num_kv_heads", "config.model.num_kv_heads (resolved: 0 -> num_heads)", None,
               lambda c: c.model.num_kv_heads),
    TrainerArg("batch_size", "tokens per optimizer step (data.global_batch_size x "
               "data.seq_len): what a per-token mean loss averages over (Sophia-G)", None,
               lambda c: c.config.data.global_batch_size * c.config.data.seq_len),
    TrainerArg("warmup_steps", "config.optimizer.schedule.warmup_steps, for a factory that "
               "applies its own warmup (then the schedule must be 'constant')",
               "optimizer.schedule.warmup_steps",
               lambda c: c.config.optimizer.schedule.warmup_steps),
)
BY_NAME = {arg.name: arg for arg in TRAINER_ARGS}
# Trainer settings a sweep may tune that are not factory arguments.
TRAINER_HYPERPARAMETERS = {"grad_clip": "optimizer.grad_clip",
                           "qk_clip_tau": "optimizer.qk_clip_tau"}   # train/qk_clip.py


def is_learning_rate(name: str) -> bool:
  """True for a parameter learning-rate argument (see the module docstring)."""
  return (name == "learning_rate" or name.endswith("_learning_rate")
          or name.startswith("learning_rate_"))


def trainer_owned(accepted: list[str]) -> list[str]:
  """The arguments of a factory with signature ``accepted`` that the trainer fills in."""
  return [name for name in accepted if name in BY_NAME]


def sweepable_config_keys() -> dict[str, str]:
  """Trial hyperparameter name -> trainer config key, for names a sweep may set directly."""
  keys = {arg.name: arg.config_key for arg in TRAINER_ARGS if arg.config_key}
  keys.update(TRAINER_HYPERPARAMETERS)
  return keys


def owns_warmup(accepted: list[str]) -> bool:
  """A factory taking ``warmup_steps`` applies the run's warmup itself."""
  return "warmup_steps" in accepted
