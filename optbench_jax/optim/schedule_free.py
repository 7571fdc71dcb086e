"""Schedule-free AdamW (Defazio et al. 2024, "The Road Less Scheduled",
arXiv:2405.15682).

Replaces momentum and the learning-rate decay by interpolation and averaging.
Three sequences: z (the base optimizer's iterate), x (a weighted average of z,
used for evaluation) and y (where gradients are taken; the training
parameters). With c_t = w_t / sum_{i<=t} w_i and w_t = (max_{i<=t} lr_i)^r:

    z_{t+1} = z_t - lr_t (g(y_t) / (sqrt(v^_t) + eps) + wd y_t)   (AdamW with b1 = 0)
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
    y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1}

Only y (the parameters) and z are stored; x = (y - (1 - b1) z) / b1 is recovered
when needed, so memory equals AdamW's. ``schedule_free_eval_params(state,
params)`` returns x: evaluate (and checkpoint for inference) with it. The
state's ``eval_params`` method is the generic hook the trainer uses
(``optim.evaluation``).

This reproduces ``optax.contrib.schedule_free_adamw`` step for step, including
its convention for schedules: the averaging weight reads the schedule at the
1-based step t, while the z step, like every optax learning-rate scaling, reads
it at the 0-based count t - 1. (The authors' PyTorch reference uses one value
per step, ``lr * min(1, (k + 1) / warmup)``, for both; with optax's
``warmup_steps`` the z steps therefore lag the reference's warmup by one step.)
Use a constant learning rate (plus ``warmup_steps``): the method needs no decay.
``mask`` (not in optax) selects the decayed leaves.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim.scaling import decay_and_scale


class ScheduleFreeState(NamedTuple):
  b1: jax.Array           # interpolation coefficient (kept to recover x)
  weight_sum: jax.Array   # sum of the averaging weights so far
  step_count: jax.Array   # int32, 1-based step about to be taken
  max_lr: jax.Array       # running maximum of the learning rate
  base_state: Any         # state of the base optimizer (the z step)
  z: Any                  # base iterate

  def eval_params(self, params: Any) -> Any:
    """The averaged iterate x = (y - (1 - b1) z) / b1 (``optim.eval_params`` hook)."""
    return jax.tree.map(lambda y, z: ((y - (1.0 - self.b1) * z) / self.b1).astype(y.dtype),
                        params, self.z)


def schedule_free(base: optax.GradientTransformation, learning_rate: Any, b1: Any = 0.9,
                  weight_lr_power: Any = 2.0,
                  state_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Makes ``base`` (a full optimizer without momentum) schedule-free."""
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    dtype = optax.tree.dtype(params, "lowest")
    z = params if state_dtype is None else optax.tree.cast(params, state_dtype)
    return ScheduleFreeState(
        b1=jnp.asarray(b1, dtype), weight_sum=jnp.zeros([], dtype),
        step_count=jnp.ones([], jnp.int32), max_lr=jnp.zeros([], dtype),
        base_state=base.init(params), z=jax.tree.map(jnp.copy, z))

  def update_fn(grads, state, params=None, **extra_args):
    lr = learning_rate
    if callable(learning_rate):
      lr = jnp.asarray(learning_rate(state.step_count), state.max_lr.dtype)
    max_lr = jnp.maximum(state.max_lr, lr)
    weight = max_lr ** weight_lr_power
    weight_sum = state.weight_sum + weight
    # 0/0 on a zero learning rate (warmup start) means "no averaging yet".
    ck = jnp.where(jnp.isnan(weight) | jnp.isnan(weight_sum), jnp.nan,
                   jnp.nan_to_num(weight / weight_sum, nan=0.0, posinf=jnp.inf))
    step, base_state = base.update(grads, state.base_state, params, **extra_args)

    def leaf(y, z, u):
      z_new = (z + u).astype(z.dtype)
      x = (y - (1.0 - b1) * z) / b1
      x_new = (1.0 - ck) * x + ck * z_new
      return (b1 * x_new + (1.0 - b1) * z_new - y).astype(y.dtype), z_new

    out = jax.tree.map(leaf, params, state.z, step)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], params, out)
    return pick(0), ScheduleFreeState(
        b1=state.b1, weight_sum=weight_sum, step_count=optax.safe_increment(state.step_count),
        max_lr=max_lr, base_state=base_state, z=pick(1))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _linear_warmup(peak: Any, warmup_steps: Any) -> optax.Schedule:
  """peak * min(step / warmup_steps, 1), as ``optax.warmup_constant_schedule(0, peak, W)``,
  written with ``jnp`` only so that ``warmup_steps`` may be traced."""
  def schedule(step):
    warmup = jnp.asarray(warmup_steps, jnp.float32)
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(warmup, 1.0), 0.0, 1.0)
    return peak * jnp.where(warmup > 0, fraction, 1.0)
  return schedule


def schedule_free_adamw(learning_rate: Any = 0.0025, warmup_steps: int | None = None,
                        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        weight_decay: Any = 0.0, mask: Any = None,
                        weight_lr_power: float = 2.0,
                        state_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Schedule-free AdamW, as ``optax.contrib.schedule_free_adamw`` (plus ``mask``).

  Args:
    learning_rate: constant peak learning rate (> 0 in practice; a schedule is
      accepted but the method is meant to run without decay).
    warmup_steps: linear warmup from 0 over this many steps (None: none).
    b1: interpolation between the average x and the iterate z, in (0, 1).
    b2: second-moment rate in [0, 1).
    eps: > 0, added to sqrt(v^).
    weight_decay: >= 0, multiplied by the learning rate, applied at y.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    weight_lr_power: r >= 0 in the averaging weight max_lr^r (2 as the paper).
    state_dtype: dtype of z (default: the parameter's).
  """
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_beta("b1", b1)
  if isinstance(b1, (int, float)) and b1 <= 0.0:
    raise ValueError(f"b1 must be in (0, 1) for schedule-free (x is recovered as "
                     f"(y - (1 - b1) z) / b1), got {b1!r}")
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_non_negative("weight_lr_power", weight_lr_power)
  if warmup_steps is not None:
    if not isinstance(warmup_steps, jax.Array):  # an array (traced) under inject_hyperparams
      hyperparams.check_int_at_least("warmup_steps", warmup_steps, 0)
    if callable(learning_rate):
      raise ValueError("warmup_steps needs a constant learning_rate (got a schedule); "
                       "put the warmup into the schedule instead")
    learning_rate = _linear_warmup(learning_rate, warmup_steps)
  base = optax.chain(
      optax.scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
      decay_and_scale(learning_rate, weight_decay, mask),
  )
  return schedule_free(base, learning_rate, b1, weight_lr_power, state_dtype)


def schedule_free_eval_params(state: Any, params: Any) -> Any:
  """The averaged iterate x = (y - (1 - b1) z) / b1 to evaluate with.

  ``state`` is the optimizer state of a schedule-free optimizer, possibly
  nested (chained with clipping, inside ``inject_hyperparams`` or ``MultiSteps``).
  """
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, ScheduleFreeState))
           if isinstance(s, ScheduleFreeState)]
  if len(found) != 1:
    raise ValueError(f"schedule_free_eval_params needs a state holding exactly one "
                     f"ScheduleFreeState, found {len(found)}")
  return found[0].eval_params(params)
