"""Learning-rate schedules: constant, linear, cosine (two variants) and WSD.

Every schedule is an optax schedule, ``step -> learning rate``, built from
``jnp`` operations only, so it is jit-safe and works on traced step counts.
Arguments are validated when the schedule is built.

* :func:`constant` -- linear warmup from 0 over ``warmup_steps`` (default 0),
  then constant.
* :func:`cosine` -- linear warmup from 0 to ``peak``, then half-cosine decay to
  ``final_fraction * peak`` at ``total_steps`` (default final fraction 0.1).
* :func:`paper_cosine` -- the variant of Semenov et al. (2025)'s code: the
  warmup is itself cosine-shaped and starts at ``peak / 100``, and the decay
  ends at ``peak / 100``. Kept for reproducing their curves (a **quirk** of that
  code, not a recommendation).
* :func:`wsd` -- warmup-stable-decay (Hägele et al. 2024): linear warmup,
  constant, then a decay over the last ``decay_fraction`` of the run with shape
  ``linear | cosine | sqrt | square | exp | mirror_cosine`` down to
  ``final_fraction * peak`` (default 0).

Decay shapes, for progress ``p`` in [0, 1] through the decay, as the fraction
``f(p)`` of the way from the final value to the peak:

  linear: 1 - p            cosine: (1 + cos(pi p)) / 2     sqrt: 1 - sqrt(p)
  square: 1 - p^2          mirror_cosine: 2 (1 - p) - (1 + cos(pi p)) / 2
  exp: (exp(-5 p) - exp(-5)) / (1 - exp(-5))
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams

DECAY_SHAPES = ("linear", "cosine", "sqrt", "square", "exp", "mirror_cosine")
_EXP_RATE = 5.0


def _check_common(peak: float, total_steps: int, warmup_steps: int, final_fraction: float):
  hyperparams.check_learning_rate("peak learning rate", peak)
  hyperparams.check_int_at_least("total_steps", total_steps, 1)
  hyperparams.check_int_at_least("warmup_steps", warmup_steps, 0)
  if warmup_steps > total_steps:
    raise ValueError(
        f"warmup_steps ({warmup_steps}) is longer than the schedule (total_steps={total_steps})")
  if not 0.0 <= final_fraction <= 1.0:
    raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction!r}")


def decay_multiplier(shape: str, progress: jnp.ndarray) -> jnp.ndarray:
  """The fraction of the way from the final value to the peak at ``progress``."""
  p = jnp.clip(progress, 0.0, 1.0)
  if shape == "linear":
    return 1.0 - p
  if shape == "cosine":
    return 0.5 * (1.0 + jnp.cos(jnp.pi * p))
  if shape == "sqrt":
    return 1.0 - jnp.sqrt(p)
  if shape == "square":
    return 1.0 - p**2
  if shape == "exp":
    floor = math.exp(-_EXP_RATE)
    return (jnp.exp(-_EXP_RATE * p) - floor) / (1.0 - floor)
  if shape == "mirror_cosine":
    return 2.0 * (1.0 - p) - 0.5 * (1.0 + jnp.cos(jnp.pi * p))
  raise ValueError(f"decay shape must be one of {list(DECAY_SHAPES)}, got {shape!r}")


def constant(learning_rate: float, warmup_steps: int = 0) -> optax.Schedule:
  """``step -> learning_rate``, after a linear warmup from 0 over ``warmup_steps``."""
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_int_at_least("warmup_steps", warmup_steps, 0)
  if not warmup_steps:
    return optax.constant_schedule(learning_rate)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return learning_rate * jnp.minimum(step / warmup_steps, 1.0)

  return schedule


def linear(peak: float, total_steps: int, warmup_steps: int = 0,
           final_fraction: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to ``peak``, then linear decay to ``final_fraction * peak``."""
  _check_common(peak, total_steps, warmup_steps, final_fraction)
  return wsd(peak, total_steps, warmup_steps,
             decay_fraction=1.0 - warmup_steps / total_steps,
             decay_shape="linear", final_fraction=final_fraction)


def cosine(peak: float, total_steps: int, warmup_steps: int = 0,
           final_fraction: float = 0.1) -> optax.Schedule:
  """Linear warmup to ``peak``, cosine decay to ``final_fraction * peak`` at ``total_steps``."""
  _check_common(peak, total_steps, warmup_steps, final_fraction)
  final = final_fraction * peak

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    decay = final + (peak - final) * decay_multiplier("cosine", progress)
    return jnp.where(step < warmup_steps, warm, decay)

  return schedule


def paper_cosine(peak: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """Semenov et al. (2025) cosine: cosine-shaped warmup from peak/100, decay to peak/100."""
  _check_common(peak, total_steps, warmup_steps, 0.01)
  low = peak / 100.0

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm_progress = step / max(warmup_steps, 1)
    warm = low + (peak - low) * (1.0 - decay_multiplier("cosine", warm_progress))
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    decay = low + (peak - low) * decay_multiplier("cosine", progress)
    return jnp.where(step < warmup_steps, warm, decay)

  return schedule


def wsd(peak: float, total_steps: int, warmup_steps: int = 0, decay_fraction: float = 0.2,
        decay_shape: str = "linear", final_fraction: float = 0.0) -> optax.Schedule:
  """Warmup (linear) - stable - decay over the last ``decay_fraction`` of ``total_steps``."""
  _check_common(peak, total_steps, warmup_steps, final_fraction)
  if not 0.0 <= decay_fraction <= 1.0:
    raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction!r}")
  hyperparams.check_choice("decay_shape", decay_shape, DECAY_SHAPES)
  decay_steps = int(round(decay_fraction * total_steps))
  if warmup_steps + decay_steps > total_steps:
    raise ValueError(
        f"warmup_steps ({warmup_steps}) + decay steps ({decay_steps} = decay_fraction "
        f"{decay_fraction} x {total_steps}) exceed total_steps ({total_steps})")
  decay_start = total_steps - decay_steps
  final = final_fraction * peak

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup_steps, 1)
    progress = (step - decay_start) / max(decay_steps, 1)
    decay = final + (peak - final) * decay_multiplier(decay_shape, progress)
    value = jnp.where(step < decay_start, peak, decay)
    return jnp.where(step < warmup_steps, warm, value)

  return schedule


SCHEDULES = {"constant": constant, "linear": linear, "cosine": cosine,
             "paper_cosine": paper_cosine, "wsd": wsd}


def create(name: str, peak: float, total_steps: int, warmup_steps: int = 0,
           final_fraction: float | None = None, decay_fraction: float | None = None,
           decay_shape: str | None = None) -> optax.Schedule:
  """The schedule ``name`` (``constant | linear | cosine | paper_cosine | wsd``), one signature.

  ``peak`` is every schedule's peak (``constant``'s value). Options left
  ``None`` keep the schedule's default; an option the schedule does not have
  (``decay_fraction`` for ``cosine``) is ignored, since a run's config carries
  every option for whichever schedule it names. ``warmup_steps`` longer than
  ``total_steps`` is refused for every schedule, ``constant`` included.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; valid: {list(SCHEDULES)}")
  hyperparams.check_int_at_least("total_steps", total_steps, 1)
  if warmup_steps > total_steps:
    raise ValueError(
        f"warmup_steps ({warmup_steps}) is longer than the run (total_steps={total_steps})")
  build = SCHEDULES[name]
  options = dict(peak=peak, learning_rate=peak, total_steps=total_steps,
                 warmup_steps=warmup_steps, final_fraction=final_fraction,
                 decay_fraction=decay_fraction, decay_shape=decay_shape)
  accepted = inspect.signature(build).parameters
  return build(**{k: v for k, v in options.items() if k in accepted and v is not None})


@dataclasses.dataclass(frozen=True)
class Spec:
  """A schedule's shape without its peak: every learning rate of a run follows one Spec.

  ``at(peak)`` is :func:`create` with that peak.
  """
  name: str
  total_steps: int
  warmup_steps: int = 0
  final_fraction: float | None = None
  decay_fraction: float | None = None
  decay_shape: str | None = None

  def at(self, peak: float) -> optax.Schedule:
    return create(self.name, peak, self.total_steps, self.warmup_steps, self.final_fraction,
                  self.decay_fraction, self.decay_shape)
