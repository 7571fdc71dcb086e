"""Validation of a resolved trainer config, before anything is compiled.

``config_flags`` already rejects command-line overrides of unknown keys; a
config built in Python or loaded from JSON can still carry a typo, an
impossible value or a batch that cannot be split over the devices. Every check
here raises one :class:`ConfigError` naming the culprit, so a bad run fails in
seconds instead of after a long compile.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

import ml_collections

from configs import base
from optbench_jax import models

# Free-form sub-configs: their keys are checked by their consumer (the optimizer
# registry names unknown hyperparameters).
FREE_FORM = ("optimizer.hparams",)

DATA_SOURCES = ("synthetic", "shards")
FACTOR_SHARDINGS = ("matched", "full", "replicated")   # train/state.py


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def as_dict(config: Any) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return dict(config)


def check_known_keys(config: Any, schema: Mapping | None = None) -> None:
  """Every key of ``config`` must exist in ``configs/base.py`` (except free-form parts)."""
  schema = as_dict(base.base_config()) if schema is None else schema

  def walk(node: Mapping, reference: Mapping, prefix: str):
    for key, value in node.items():
      path = f"{prefix}{key}"
      if path in FREE_FORM:
        continue
      if key not in reference:
        close = difflib.get_close_matches(key, list(reference), n=1, cutoff=0.6)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key {path!r}{hint}; the schema is configs/base.py")
      if isinstance(reference[key], Mapping) != isinstance(value, Mapping):
        raise ConfigError(f"config key {path!r} must be "
                          f"{'a section' if isinstance(reference[key], Mapping) else 'a value'}")
      if isinstance(value, Mapping):
        walk(value, reference[key], path + ".")

  walk(as_dict(config), schema, "")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
  _require(value in choices, f"config.{key} must be one of {list(choices)}, got {value!r}")


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
  _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"config.{key} must be an integer >= {minimum}, got {value!r}")


def check_values(config: ml_collections.ConfigDict) -> None:
  """Value checks that need no devices: choices, positive sizes; the model via ModelSpec."""
  m, d, o, t = config.model, config.data, config.optimizer, config.train
  try:     # the model's settings have one owner: ModelSpec
    models.ModelSpec.from_config(m)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None

  _choice("data.source", d.source, DATA_SOURCES)
  _positive_int("data.seq_len", d.seq_len)
  _positive_int("data.global_batch_size", d.global_batch_size)
  _positive_int("data.grad_accum_steps", d.grad_accum_steps)
  _require(d.global_batch_size % d.grad_accum_steps == 0,
           f"config.data.global_batch_size ({d.global_batch_size}) must be divisible by "
           f"data.grad_accum_steps ({d.grad_accum_steps})")
  if d.source == "synthetic":
    _require(d.synthetic_vocab_size <= m.vocab_size,
             f"config.data.synthetic_vocab_size ({d.synthetic_vocab_size}) exceeds "
             f"model.vocab_size ({m.vocab_size})")

  _require(o.grad_clip >= 0, f"config.optimizer.grad_clip must be >= 0, got {o.grad_clip!r}")
  _require(o.weight_decay >= 0,
           f"config.optimizer.weight_decay must be >= 0, got {o.weight_decay!r}")
  _require(isinstance(o.qk_clip_tau, (int, float)) and not isinstance(o.qk_clip_tau, bool)
           and o.qk_clip_tau >= 0,
           f"config.optimizer.qk_clip_tau must be a number >= 0 (0 = off; Kimi K2 used 100), "
           f"got {o.qk_clip_tau!r}")

  _positive_int("train.steps", t.steps)
  _positive_int("train.log_every", t.log_every)
  _positive_int("train.eval_every", t.eval_every, 0)
  _positive_int("train.eval_batches", t.eval_batches)
  _positive_int("train.checkpoint_every", t.checkpoint_every, 0)
  _positive_int("train.keep_checkpoints", t.keep_checkpoints)
  _choice("mesh.factor_sharding", config.mesh.factor_sharding, FACTOR_SHARDINGS)


def check_batch_split(config: ml_collections.ConfigDict, batch_axes: Mapping[str, int],
                      process_count: int) -> None:
  """The micro-batch must split evenly over hosts and the batch mesh axes ``{axis: size}``."""
  d = config.data
  micro = d.global_batch_size // d.grad_accum_steps
  batch_shards = math.prod(batch_axes.values())
  _require(d.global_batch_size % process_count == 0,
           f"config.data.global_batch_size ({d.global_batch_size}) must be divisible by the "
           f"number of hosts ({process_count})")
  _require(micro % batch_shards == 0,
           f"the micro-batch (data.global_batch_size {d.global_batch_size} / "
           f"data.grad_accum_steps {d.grad_accum_steps} = {micro}) must be divisible by the "
           f"{batch_shards} devices the batch is sharded over (mesh "
           f"{' x '.join(f'{a}={n}' for a, n in batch_axes.items())})")


def resolve(config: Any) -> ml_collections.ConfigDict:
  """A fresh ConfigDict: ``configs/base.py`` defaults overlaid with ``config``.

  Unknown keys are rejected first (a partial config, e.g. a sweep's JSON, gets
  the defaults for what it leaves out).
  """
  check_known_keys(config)
  merged = as_dict(base.base_config())

  def overlay(target: dict, source: Mapping, prefix: str):
    for key, value in source.items():
      if isinstance(value, Mapping) and f"{prefix}{key}" not in FREE_FORM:
        overlay(target[key], value, f"{prefix}{key}.")
      else:
        target[key] = dict(value) if isinstance(value, Mapping) else value

  overlay(merged, as_dict(config), "")
  return ml_collections.ConfigDict(merged)


def validate(config: ml_collections.ConfigDict) -> None:
  """Schema and value checks (device-independent)."""
  check_known_keys(config)
  check_values(config)
