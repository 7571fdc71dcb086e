"""Sign-based optimizers: Lion and Signum.

**Lion** (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
arXiv:2302.06675):

    u_t = sign(b1 m_{t-1} + (1 - b1) g_t)      m_t = b2 m_{t-1} + (1 - b2) g_t
    p_t = p_{t-1} - lr_t (u_t + wd p_{t-1})

identical to ``optax.lion`` with the same arguments (defaults b1 0.9, b2 0.99).

**Signum** (Bernstein et al. 2018, "signSGD: Compressed Optimisation for
Non-Convex Problems", arXiv:1802.04434): the sign of heavy-ball momentum,

    m_t = mu m_{t-1} + (1 - mu) g_t,  m_0 = 0
    u_t = sign(m_t)            (Nesterov: u_t = sign(mu m_t + (1 - mu) g_t))
    p_t = p_{t-1} - lr_t (u_t + wd p_{t-1})

The buffer is kept as an EMA (bounded, safe in low precision); it differs from
the sum form ``m_t = mu m_{t-1} + g_t`` only by the positive factor (1 - mu), so
the signs and the updates are identical. Without weight decay and Nesterov this
is ``optax.signum``. **Quirk** of the benchmark paper's code (Semenov et al.
2025): its momentum buffer starts as a copy of the parameter, not zero, which
biases the first ~1/(1-mu) steps towards -sign(p) (an extra weight-decay-like
pull); we start at zero as the Signum paper does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


class ScaleByLionState(NamedTuple):
  count: jax.Array  # int32 scalar: steps taken so far
  mu: Any           # EMA of the gradient (rate b2)


class ScaleBySignumState(NamedTuple):
  mu: Any  # EMA of the gradient (rate momentum), starts at zero


def scale_by_lion(b1: Any = 0.9, b2: Any = 0.99,
                  mu_dtype: Any = None) -> optax.GradientTransformation:
  """The Lion direction sign(b1 m + (1 - b1) g) (to be scaled by ``-learning_rate``)."""
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return ScaleByLionState(count=jnp.zeros([], jnp.int32),
                            mu=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    direction = jax.tree.map(lambda g, m: jnp.sign((1.0 - b1) * g + b1 * m), updates, state.mu)
    mu = optax.tree.update_moment(updates, state.mu, b2, 1)
    return direction, ScaleByLionState(count=optax.safe_increment(state.count),
                                       mu=optax.tree.cast(mu, mu_dtype))

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_signum(momentum: Any = 0.9, nesterov: bool = False,
                    mu_dtype: Any = None) -> optax.GradientTransformation:
  """The Signum direction sign(m) (to be scaled by ``-learning_rate``)."""
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return ScaleBySignumState(mu=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, momentum, 1)
    if nesterov:
      direction = jax.tree.map(lambda g, m: jnp.sign(momentum * m + (1.0 - momentum) * g),
                               updates, mu)
    else:
      direction = jax.tree.map(jnp.sign, mu)
    direction = jax.tree.map(lambda d, g: d.astype(g.dtype), direction, updates)
    return direction, ScaleBySignumState(mu=optax.tree.cast(mu, mu_dtype))

  return optax.GradientTransformation(init_fn, update_fn)


def lion(learning_rate: Any, b1: float = 0.9, b2: float = 0.99, mu_dtype: Any = None,
         weight_decay: Any = 1e-3, mask: Any = None) -> optax.GradientTransformationExtraArgs:
  """Lion, as ``optax.lion`` (same defaults) with argument validation.

  Args:
    learning_rate: scalar or schedule, >= 0 (typically 3-10x smaller than AdamW's).
    b1: interpolation between momentum and gradient for the sign, in [0, 1).
    b2: momentum EMA rate, in [0, 1).
    mu_dtype: dtype of the momentum (default: the parameter's).
    weight_decay: >= 0, scalar or schedule, multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
  """
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  return optax.chain(scale_by_lion(b1, b2, mu_dtype),
                     decay_and_scale(learning_rate, weight_decay, mask))


def signum(learning_rate: Any, momentum: float = 0.9, nesterov: bool = False,
           weight_decay: Any = 0.0, mask: Any = None,
           mu_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """Signum: sign of momentum, decoupled weight decay; momentum starts at zero.

  Args:
    learning_rate: scalar or schedule, >= 0.
    momentum: heavy-ball coefficient in [0, 1) (0 gives signSGD).
    nesterov: take the sign of the Nesterov look-ahead g + momentum * m.
    weight_decay: >= 0, scalar or schedule, multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    mu_dtype: dtype of the momentum (default: the parameter's).
  """
  hyperparams.check_beta("momentum", momentum)
  return optax.chain(scale_by_signum(momentum, nesterov, mu_dtype),
                     decay_and_scale(learning_rate, weight_decay, mask))


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(lion, width_rules.ELEMENTWISE)
width_rules.declare(signum, width_rules.ELEMENTWISE)
