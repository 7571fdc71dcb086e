"""The factory contract, and :func:`bind`: the one place a factory meets a run.

**What a factory may take.** An optimizer factory (built in, registered, an
import path or an entry point) takes keyword arguments and returns an
``optax.GradientTransformation``. It must take ``learning_rate`` (a scalar or
an optax schedule) and ``weight_decay``. Besides the hyperparameters a user
tunes, it may take any of :data:`TRAINER_OWNED`: facts of the run that whoever
trains fills in (never a user's hyperparameter). ``python -m
optbench_jax.optim.check`` checks a factory against this contract.

**Which arguments are learning rates.** Every factory argument that is a
*parameter* learning rate -- ``learning_rate``, any ``*_learning_rate``
(Muon's ``adam_learning_rate``) and any ``learning_rate_*`` (MARS's
``learning_rate_1d``) -- must accept a schedule. Rates that are not parameter
learning rates are named otherwise (Kron's ``preconditioner_lr`` is the
preconditioner fit's step size, constant in the PSGD reference).

**The learning-rate rule** (Semenov et al. 2025's code: one LambdaLR /
OneCycleLR scheduler, or its CombinedScheduler for Muon, multiplies the
learning rate of every parameter group). Every parameter learning rate follows
the run's one schedule with the same shape, scaled to its own peak:

    lr_arg(t) = schedule(t) / schedule_peak * peak_arg

with ``peak_arg`` the configured value for that argument (the run's
``learning_rate``, else the hyperparameter, else the factory's default;
``None`` keeps the factory's meaning, e.g. "same as learning_rate").

**Who owns warmup.** A factory that takes ``warmup_steps`` (schedule-free
AdamW, Defazio et al. 2024) applies the warmup itself, as its method
prescribes, and runs without a decay schedule: it gets the run's warmup length
and every learning rate as its constant peak; any schedule but ``constant`` is
refused.

:func:`bind` applies all of this once: it reads the factory's signature once,
binds hyperparameters, the run's schedule and the trainer-owned values, and
calls the factory once. Nothing here knows a trainer; the caller supplies the
values.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Mapping, NamedTuple

import optax

from optbench_jax.optim import registry
from optbench_jax.optim import schedules

# Arguments a factory may take that whoever trains fills in: name -> what it is.
TRAINER_OWNED: dict[str, str] = {
    "learning_rate": "the run's peak learning rate, shaped by its schedule",
    "weight_decay": "decoupled weight decay (multiplied by the learning rate)",
    "mask": "the weight-decay mask: hidden matrices and an untied head (optim.weight_decay_mask)",
    "batch_axes": "leading stacked-layer / expert axes of every parameter",
    "num_heads": "attention heads of the model",
    "num_kv_heads": "key/value heads of the model",
    "batch_size": "tokens per optimizer step: what a per-token mean loss averages over (Sophia-G)",
    "warmup_steps": "the run's warmup length, for a factory that applies its own warmup",
}


class BindError(ValueError):
  """The hyperparameters cannot be bound to the factory; the message names the argument."""


class Bound(NamedTuple):
  tx: optax.GradientTransformation
  learning_rates: dict       # learning-rate argument -> its peak (None: the factory's meaning)
  ignored: tuple             # hyperparameters dropped as another optimizer's


def is_learning_rate(name: str) -> bool:
  """True for a parameter learning-rate argument (see the module docstring)."""
  return (name == "learning_rate" or name.endswith("_learning_rate")
          or name.startswith("learning_rate_"))


def accepted_arguments(factory: Callable) -> list[str]:
  """The keyword arguments ``factory`` takes."""
  return list(inspect.signature(factory).parameters)


def learning_rate_arguments(factory: Callable) -> list[str]:
  """The factory's parameter learning-rate arguments."""
  return [name for name in accepted_arguments(factory) if is_learning_rate(name)]


def trainer_owned(accepted: list[str]) -> list[str]:
  """The arguments of a factory taking ``accepted`` that whoever trains fills in."""
  return [name for name in accepted if name in TRAINER_OWNED]


def owns_warmup(accepted: list[str]) -> bool:
  """A factory taking ``warmup_steps`` applies the run's warmup itself."""
  return "warmup_steps" in accepted


def _taken_by_another(name: str) -> set[str]:
  """Hyperparameter names that some other built-in optimizer takes."""
  known = set()
  for other in registry.builtin_names():
    if other != name:
      known.update(accepted_arguments(registry.factory(other)))
  return known


def bind(name: str, hparams: Mapping[str, Any], *, learning_rate: float,
         schedule: schedules.Spec, trainer_values: Mapping[str, Callable[[], Any]]) -> Bound:
  """Builds optimizer ``name`` for a run.

  ``hparams``: the user's hyperparameters. Keys ``name`` does not take but
  another built-in does are dropped (a preset's AdamW betas when only the name
  was overridden) and listed in ``Bound.ignored``; any other unknown key is an
  error. ``learning_rate``: the run's peak. ``schedule``: the run's schedule
  shape (see :mod:`schedules`). ``trainer_values``: for each trainer-owned
  argument but the learning rate, a function giving its value (called only if
  the factory takes it). Raises :class:`BindError` naming the culprit.
  """
  try:
    factory = registry.factory(name)
  except ValueError as e:
    raise BindError(str(e)) from None
  parameters = inspect.signature(factory).parameters
  accepted = list(parameters)
  unaccepted = [k for k in hparams if k not in accepted]
  others = _taken_by_another(name) if unaccepted else set()
  foreign = tuple(sorted(k for k in unaccepted if k in others))
  if foreign:
    logging.getLogger(__name__).warning(
        "optimizer %r does not take hparams %s (set for another optimizer); ignoring them",
        name, list(foreign))
  hparams = {k: v for k, v in hparams.items() if k not in foreign}
  unknown = sorted(set(hparams) - set(accepted))
  if unknown:
    raise BindError(f"unknown hyperparameter(s) for optimizer {name!r}: {unknown}; "
                    f"valid: {', '.join(accepted)}")
  owned = trainer_owned(accepted)
  clash = sorted(set(owned) & set(hparams))
  if clash:
    raise BindError(f"hparams must not set {clash}: the trainer sets them ("
                    + "; ".join(f"{k}: {TRAINER_OWNED[k]}" for k in clash) + ")")
  own_warmup = owns_warmup(accepted)
  if own_warmup and schedule.name != "constant":
    raise BindError(f"optimizer {name!r} applies its own warmup (warmup_steps) and runs "
                    f"without a decay schedule; use the 'constant' schedule (got "
                    f"{schedule.name!r})")

  kwargs = {arg: trainer_values[arg]() for arg in owned
            if arg not in ("learning_rate", "warmup_steps") and arg in trainer_values}
  if own_warmup:
    kwargs["warmup_steps"] = schedule.warmup_steps
  peaks = {}
  for arg, parameter in parameters.items():
    if not is_learning_rate(arg):
      continue
    if arg == "learning_rate":
      peak = learning_rate
    elif arg in hparams:
      peak = hparams[arg]
    else:
      peak = None if parameter.default is inspect.Parameter.empty else parameter.default
    peaks[arg] = peak
    if peak is None:
      continue            # the factory's own meaning (e.g. "same as learning_rate")
    if isinstance(peak, bool) or not isinstance(peak, (int, float)):
      raise BindError(f"hparams.{arg} must be a number (its peak; the run's schedule is "
                      f"applied to it), got {peak!r}")
    kwargs[arg] = float(peak) if own_warmup else schedule.at(float(peak))
  kwargs.update({k: v for k, v in hparams.items() if k not in kwargs})
  try:
    tx = factory(**kwargs)
  except (TypeError, ValueError) as e:
    raise BindError(f"({name}) {e}") from None
  return Bound(tx=tx, learning_rates=peaks, ignored=foreign)
