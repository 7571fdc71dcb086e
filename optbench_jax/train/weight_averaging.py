"""Weight averaging readouts for any optimizer: an EMA and a uniform tail average.

Two averages of the iterates theta_t (the parameters after t optimizer steps),
kept in float32 beside the parameters and updated inside the train step
(``train.weight_averaging``; each off at 0):

* EMA (Polyak averaging with exponential weights; Kaddour 2022, "Stop wasting
  my time! Saving days of ImageNet and BERT training with latest weight
  averaging", arXiv 2209.14981; Sanyal et al. 2023, "Early weight averaging
  meets high learning rates for LLM pre-training", arXiv 2306.03241), from
  step s0 = ``ema_start``:

      ema_t = theta_t                                  t <= s0
      ema_t = d ema_{t-1} + (1 - d) theta_t            t >  s0,   d = ``ema_decay``

* Tail average (LAWA / SWA's uniform mean over one window, as the reference
  benchmark's ``WeightAverager`` with one horizon at the end of training):
  the running mean of theta_t over the last fraction f = ``tail_fraction`` of
  the run, t = T0 .. T with T0 = ceil((1 - f) T), T = ``train.steps``:

      tail_t = 0                                       t <  T0
      tail_t = tail_{t-1} + (theta_t - tail_{t-1}) / (t - T0 + 1)   t >= T0

  so tail_T = mean(theta_T0, ..., theta_T).

The averages are of the state's ``params`` (for schedule-free that is its
y iterate; its own averaged x keeps going through the ``eval_params`` hook as
the raw readout). They are fixed by the config before the run, never chosen on
validation loss, and evaluated beside the raw weights as their own keys
(``eval_loss_ema``, ``eval_loss_tail``); the run's objective stays the raw
``eval_loss``. When both are off the state carries no averages at all.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

EMA, TAIL = "ema", "tail"
READOUTS = (EMA, TAIL)


@dataclasses.dataclass(frozen=True)
class Spec:
  """``train.weight_averaging`` resolved over ``train.steps``."""
  ema_decay: float = 0.0
  ema_start: int = 0
  tail_start: int | None = None    # T0; None = tail average off

  @classmethod
  def from_config(cls, train_config: Any) -> "Spec":
    w = train_config.weight_averaging
    tail_start = (math.ceil((1 - w.tail_fraction) * train_config.steps)
                  if w.tail_fraction > 0 else None)
    return cls(ema_decay=float(w.ema_decay), ema_start=int(w.ema_start),
               tail_start=None if tail_start is None else max(tail_start, 1))

  @property
  def readouts(self) -> tuple[str, ...]:
    """The averages kept, in ``READOUTS`` order (empty when off)."""
    return tuple(name for name, on in ((EMA, self.ema_decay > 0),
                                       (TAIL, self.tail_start is not None)) if on)

  @property
  def enabled(self) -> bool:
    return bool(self.readouts)

  def reported_at(self, step: int) -> tuple[str, ...]:
    """The averages worth evaluating at ``step``: each once it differs from theta_step."""
    starts = {EMA: self.ema_start + 1, TAIL: (self.tail_start or 0) + 1}
    return tuple(name for name in self.readouts if step >= starts[name])


def _f32(params: Any) -> Any:
  return jax.tree.map(lambda p: p.astype(jnp.float32), params)


def init(spec: Spec, params: Any) -> dict:
  """The averages at step 0: ema_0 = theta_0, tail_0 = 0 (float32)."""
  averages = {}
  if EMA in spec.readouts:
    averages[EMA] = _f32(params)
  if TAIL in spec.readouts:
    averages[TAIL] = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  return averages


def update(spec: Spec, averages: dict, params: Any, step: jax.Array) -> dict:
  """The averages after the step that produced ``params`` = theta_step (``step`` >= 1)."""
  new = {}
  theta = _f32(params)
  if EMA in averages:
    d = spec.ema_decay
    started = step > spec.ema_start
    new[EMA] = jax.tree.map(lambda e, x: jnp.where(started, d * e + (1 - d) * x, x),
                            averages[EMA], theta)
  if TAIL in averages:
    count = (step - spec.tail_start + 1).astype(jnp.float32)
    inside = step >= spec.tail_start
    new[TAIL] = jax.tree.map(
        lambda m, x: jnp.where(inside, m + (x - m) / jnp.maximum(count, 1.0), m),
        averages[TAIL], theta)
  return new


def as_params(average: Any, params: Any) -> Any:
  """An average cast to the parameters' dtypes (what the model is applied with)."""
  return jax.tree.map(lambda a, p: a.astype(p.dtype), average, params)
