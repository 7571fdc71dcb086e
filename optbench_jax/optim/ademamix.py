"""AdEMAMix (Pagliardini, Ablin & Grangier 2024, "The AdEMAMix Optimizer:
Better, Faster, Older", arXiv:2409.03137).

Adam with a second, slow momentum mixed into the numerator. For step t >= 1:

    m1_t = b1 m1_{t-1} + (1 - b1) g_t            (fast EMA, bias-corrected)
    m2_t = b3_t m2_{t-1} + (1 - b3_t) g_t        (slow EMA, not bias-corrected)
    v_t  = b2 v_{t-1} + (1 - b2) g_t^2           (bias-corrected)
    u_t  = (m1_t / (1 - b1^t) + alpha_t m2_t) / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)
    p_t  = p_{t-1} - lr_t (u_t + wd p_{t-1})

The paper's schedulers (its Sec. 3, used in both benchmark studies):

    alpha_t = alpha * min(t / T_alpha, 1)                      (linear from 0)
    b3_t    = f^{-1}((1 - a) f(b1) + a f(b3)),  a = min(t / T_b3, 1),
    f(b)    = ln(0.5) / ln(b) - 1                              (half-life of b)

so b3 rises from b1 to b3 linearly in half-life. t counts from 1 at the first
step, as in the paper's code. Without warmups (``alpha_warmup_steps`` and
``b3_warmup_steps`` None or 0) this is ``optax.contrib.ademamix`` exactly; like
optax, ``alpha`` and ``b3`` may also be schedules (then evaluated at the 0-based
step count, as optax does).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


class ScaleByAdemamixState(NamedTuple):
  count: jax.Array  # int32 scalar: steps taken so far
  m1: Any           # fast EMA of the gradient
  m2: Any           # slow EMA of the gradient
  nu: Any           # EMA of the squared gradient


def _warmup_fraction(step: jax.Array, warmup_steps: Any) -> jax.Array:
  """min(step / warmup_steps, 1); 1 without a warmup (None or 0)."""
  if warmup_steps is None:
    return jnp.ones([], jnp.float32)
  warmup = jnp.asarray(warmup_steps, jnp.float32)
  return jnp.where(warmup > 0, jnp.minimum(step / jnp.maximum(warmup, 1.0), 1.0), 1.0)


def half_life_interpolation(b_start: Any, b_end: Any, fraction: jax.Array) -> jax.Array:
  """The beta whose half-life is ``fraction`` of the way from b_start's to b_end's.

  Half-life in steps + 1 is ln(0.5)/ln(b); interpolating ln(0.5)/ln(b) - 1 or
  1/ln(b) linearly is the same thing (affine maps), so we interpolate 1/ln(b),
  which stays finite (0) for b = 0.
  """
  inv_start = 1.0 / jnp.log(jnp.asarray(b_start, jnp.float32))
  inv_end = 1.0 / jnp.log(jnp.asarray(b_end, jnp.float32))
  return jnp.exp(1.0 / ((1.0 - fraction) * inv_start + fraction * inv_end))


def scale_by_ademamix(b1: Any = 0.9, b2: Any = 0.999, b3: Any = 0.9999, alpha: Any = 5.0,
                      eps: Any = 1e-8, eps_root: Any = 0.0, mu_dtype: Any = None,
                      alpha_warmup_steps: Any = None, b3_warmup_steps: Any = None
                      ) -> optax.GradientTransformation:
  """The AdEMAMix direction (to be scaled by ``-learning_rate``)."""
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params, dtype=mu_dtype)
    return ScaleByAdemamixState(count=jnp.zeros([], jnp.int32), m1=zeros(), m2=zeros(),
                                nu=zeros())

  def update_fn(updates, state, params=None):
    del params
    step = (state.count + 1).astype(jnp.float32)  # the paper's 1-based t
    b3_t = b3(state.count) if callable(b3) else b3
    alpha_t = alpha(state.count) if callable(alpha) else alpha
    if b3_warmup_steps is not None:
      fraction = _warmup_fraction(step, b3_warmup_steps)
      b3_t = jnp.where(fraction < 1.0, half_life_interpolation(b1, b3_t, fraction), b3_t)
    if alpha_warmup_steps is not None:
      alpha_t = alpha_t * _warmup_fraction(step, alpha_warmup_steps)
    m1 = optax.tree.update_moment(updates, state.m1, b1, 1)
    m2 = optax.tree.update_moment(updates, state.m2, b3_t, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_int32_increment(state.count)
    m1_hat = optax.tree.bias_correction(m1, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    direction = jax.tree.map(
        lambda a, b, v: (a + alpha_t * b) / (jnp.sqrt(v + eps_root) + eps), m1_hat, m2, nu_hat)
    return direction, ScaleByAdemamixState(count=count, m1=optax.tree.cast(m1, mu_dtype),
                                           m2=optax.tree.cast(m2, mu_dtype), nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def ademamix(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, b3: Any = 0.9999,
             alpha: Any = 5.0, eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: Any = None,
             weight_decay: Any = 0.0, mask: Any = None, alpha_warmup_steps: Any = None,
             b3_warmup_steps: Any = None) -> optax.GradientTransformationExtraArgs:
  """AdEMAMix with the paper's alpha and b3 warmups.

  Args:
    learning_rate: scalar or schedule, >= 0.
    b1, b2: fast-EMA and second-moment rates in [0, 1).
    b3: slow-EMA rate in [0, 1) (or a schedule); the benchmark study uses 0.999 at 124M.
    alpha: >= 0 weight of the slow EMA (or a schedule); the benchmark study uses 8.
    eps, eps_root: > 0 outside and >= 0 inside the square root.
    mu_dtype: dtype of the two EMAs and v (default: the parameter's, as optax).
    weight_decay: >= 0, scalar or schedule, multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    alpha_warmup_steps: T_alpha; alpha grows linearly from 0 over it. None/0: no warmup.
    b3_warmup_steps: T_b3; b3 grows from b1 to b3 linearly in half-life. None/0: no warmup.
      The benchmark study sets both to the full run length.
  """
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_beta("b3", b3)
  hyperparams.check_non_negative("alpha", alpha)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_non_negative("eps_root", eps_root)
  for name, value in (("alpha_warmup_steps", alpha_warmup_steps),
                      ("b3_warmup_steps", b3_warmup_steps)):
    if value is not None:
      hyperparams.check_non_negative(name, value)
  return optax.chain(
      scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype, alpha_warmup_steps,
                        b3_warmup_steps),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(ademamix, width_rules.ELEMENTWISE)
