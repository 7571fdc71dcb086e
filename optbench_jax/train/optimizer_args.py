"""The trainer's values for the factory contract's trainer-owned arguments.

Which arguments a factory may take, which are learning rates and who owns the
warmup is the optimizer library's contract (``optim/factory_contract.py``).
This module says where the trainer gets each value: :data:`TRAINER_ARGS`
maps every trainer-owned argument to the config key a user or sweep sets it
through (None: derived from the run, never set by hand) and to its value for a
run. The trainer (``train/optimizer.py``), a sweep's search space
(``bench/search_space.py``) and a sweep's pre-flight read this table, and
nothing else names optimizers for special cases.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections

from optbench_jax import models
from optbench_jax.optim import factory_contract
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
  """One trainer-owned factory argument: its config key (None: derived from the run) and
  ``value(context)`` (None for the learning rate and the warmup, which the binding fills
  in from the schedule)."""
  name: str
  config_key: str | None
  value: Callable[[Context], Any] | None

  @property
  def source(self) -> str:
    where = f"config.{self.config_key}" if self.config_key else "derived from the run"
    return f"{where}: {factory_contract.TRAINER_OWNED[self.name]}"


TRAINER_ARGS: tuple[TrainerArg, ...] = (
    TrainerArg("learning_rate", "optimizer.learning_rate", None),
    TrainerArg("weight_decay", "optimizer.weight_decay",
               lambda c: c.config.optimizer.weight_decay),
    TrainerArg("mask", None,
               lambda c: labels_lib.weight_decay_mask(c.params, c.batch_axes,
                                                      c.config.optimizer.decay_embeddings)),
    TrainerArg("batch_axes", None, lambda c: c.batch_axes),
    TrainerArg("num_heads", None, lambda c: c.model.num_heads),
    TrainerArg("num_kv_heads", None, lambda c: c.model.num_kv_heads),
    TrainerArg("batch_size", None,
               lambda c: c.config.data.global_batch_size * c.config.data.seq_len),
    TrainerArg("warmup_steps", "optimizer.schedule.warmup_steps", None),
)
BY_NAME = {arg.name: arg for arg in TRAINER_ARGS}
assert set(BY_NAME) == set(factory_contract.TRAINER_OWNED), "every trainer-owned argument has a value"
# Trainer settings a sweep may tune that are not factory arguments.
TRAINER_HYPERPARAMETERS = {"grad_clip": "optimizer.grad_clip",
                           "qk_clip_tau": "optimizer.qk_clip_tau"}   # train/qk_clip.py


def sweepable_config_keys() -> dict[str, str]:
  """Trial hyperparameter name -> trainer config key, for names a sweep may set directly."""
  keys = {arg.name: arg.config_key for arg in TRAINER_ARGS if arg.config_key}
  keys.update(TRAINER_HYPERPARAMETERS)
  return keys


def values(context: Context) -> dict[str, Callable[[], Any]]:
  """Trainer-owned argument -> a function giving its value for this run."""
  return {arg.name: (lambda arg=arg: arg.value(context)) for arg in TRAINER_ARGS
          if arg.value is not None}
