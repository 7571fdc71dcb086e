"""ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any
beta2 with the Optimal Rate", arXiv:2411.02853), clipped variant.

ADOPT normalises the gradient by the *previous* second moment, so the
normaliser is independent of the current gradient. With t = 0, 1, ... the
number of earlier steps (optax's ``count``):

    t = 0:  v_0 = g_0^2,  m unchanged (= 0), update 0
    t > 0:  n_t = clip(g_t / max(sqrt(v_{t-1}), eps), -t^{1/4}, t^{1/4})
            m_t = b1 m_{t-1} + (1 - b1) n_t
            v_t = b2 v_{t-1} + (1 - b2) g_t^2
            p_t = p_{t-1} - lr_t (m_t + wd p_{t-1})

(Nesterov: the update is ``b1 m_t + (1 - b1) n_t``.) This is the trajectory of
``optax.contrib.adopt`` (clipping on, clip value ``count ** 0.25``), plus
decoupled weight decay multiplied by the learning rate, which optax's ADOPT
does not offer. ``weight_decay=0`` gives optax's trajectory exactly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules


class ScaleByAdoptState(NamedTuple):
  count: jax.Array  # int32 scalar: steps taken so far
  mu: Any           # first moment of the normalised gradient
  nu: Any           # second moment of the raw gradient


def scale_by_adopt(b1: Any = 0.9, b2: Any = 0.9999, eps: Any = 1e-6, mu_dtype: Any = None,
                   *, nesterov: bool = False,
                   use_clipping: bool = True) -> optax.GradientTransformation:
  """The ADOPT direction (to be scaled by ``-learning_rate``)."""
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return ScaleByAdoptState(count=jnp.zeros([], jnp.int32),
                             mu=optax.tree.zeros_like(params, dtype=mu_dtype),
                             nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    first = state.count == 0
    # On the first step v is only initialised: b2 -> 0 sets v = g^2, and b1 -> 1
    # with a zero clip value keeps m (and so the update) at zero.
    b1_t = jnp.where(first, 1.0, b1)
    b2_t = jnp.where(first, 0.0, b2)
    clip = state.count.astype(jnp.float32) ** 0.25

    def normalise(g, v):
      n = g / jnp.maximum(jnp.sqrt(v), eps)
      return jnp.clip(n, -clip, clip) if use_clipping else jnp.where(first, 0.0, n)

    normed = jax.tree.map(normalise, updates, state.nu)
    mu = optax.tree.update_moment(normed, state.mu, b1_t, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2_t, 2)
    direction = optax.tree.update_moment(normed, mu, b1_t, 1) if nesterov else mu
    return direction, ScaleByAdoptState(count=optax.safe_increment(state.count),
                                        mu=optax.tree.cast(mu, mu_dtype), nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adopt(learning_rate: Any, b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6,
          mu_dtype: Any = None, weight_decay: Any = 0.0, mask: Any = None, *,
          nesterov: bool = False, use_clipping: bool = True
          ) -> optax.GradientTransformationExtraArgs:
  """ADOPT with decoupled weight decay.

  Args:
    learning_rate: scalar or schedule, >= 0.
    b1, b2: moment decay rates in [0, 1) (defaults 0.9, 0.9999 as the paper).
    eps: > 0, floor of sqrt(v) (default 1e-6 as the paper).
    mu_dtype: dtype of the first moment (default: the parameter's).
    weight_decay: >= 0, scalar or schedule, multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    nesterov: Nesterov form of the first moment (as optax's ADOPT).
    use_clipping: clip the normalised gradient to +-t^{1/4} (the paper's stable variant).
  """
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("eps", eps)
  return optax.chain(
      scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov, use_clipping=use_clipping),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(adopt, width_rules.ELEMENTWISE)
