"""MARS (Yuan et al. 2024, "MARS: Unleashing the Power of Variance Reduction
for Training Large Models", arXiv:2411.10438), approximate mode, variants
MARS-AdamW and MARS-Lion.

For every matrix (every leaf that ``labels.label_params`` does not call a
``vector``: hidden matrices, and the embedding and head too, as in the paper's
code, which applies MARS to every 2-D weight), with g_0 = g_1:

    c_t = g_t + gamma * b1 / (1 - b1) * (g_t - g_{t-1})      (variance-reduced gradient)
    c_t = c_t / ||c_t||   if ||c_t|| > 1                       (per matrix, Frobenius)
    m_t = b1 m_{t-1} + (1 - b1) c_t
    'adamw': v_t = b2 v_{t-1} + (1 - b2) c_t^2,
             u_t = (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)
    'lion':  u_t = sign(m_t)
    p_t = p_{t-1} - lr_t (u_t + wd p_{t-1})

"Approximate" MARS keeps the previous step's gradient (at the previous
iterate) in the state instead of recomputing the gradient of the current batch
at the previous parameters (no extra forward/backward).

Vectors (norm scales, biases) get plain AdamW with their own betas
``b1_1d, b2_1d`` and learning rate ``learning_rate_1d`` (None: the matrix
learning rate), as in the paper's code (``optimize_1d=False``) and the benchmark
study's setting (MARS lr 3e-3 (0.95, 0.99), 1-D AdamW lr 1e-3 (0.8, 0.999)).

Decisions: (1) the unit-norm clip of c is per matrix, like the paper's code
(``torch.norm`` of each weight); a stacked ``(L, d_in, d_out)`` leaf is L
matrices, so each layer is clipped separately and scanned and unscanned models
behave the same. (2) **Quirk** of the paper's code: ``last_grad`` starts at zero,
so its first step uses c_1 = (1 + gamma b1 / (1 - b1)) g_1; the paper's
Algorithm starts with x_0 = x_1 (no correction at step 1), which we follow.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams, labels
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules

VARIANTS = ("adamw", "lion")


class ScaleByMarsState(NamedTuple):
  count: jax.Array  # int32 scalar: steps taken so far
  mu: Any           # EMA of c (matrices) or of g (vectors)
  nu: Any           # EMA of c^2 / g^2; shape () placeholders for MARS-Lion matrices
  prev_grad: Any    # g_{t-1} for matrices; shape () placeholders for vectors


def _is_matrix_tree(params: Any, batch_axes: labels.BatchAxesSpec) -> Any:
  """True for every leaf not labelled ``vector`` (matrices, embedding, head)."""
  return jax.tree.map(lambda label: label != labels.VECTOR,
                      labels.label_params(params, batch_axes))


def _clip_to_unit_norm(c: jax.Array, n_batch: int) -> jax.Array:
  """Rescales each matrix (the non-batch dimensions) of ``c`` to norm <= 1."""
  axes = tuple(range(n_batch, c.ndim))
  norm = jnp.sqrt(jnp.sum(jnp.square(c.astype(jnp.float32)), axis=axes, keepdims=True))
  return (c / jnp.maximum(norm, 1.0)).astype(c.dtype)


def scale_by_mars(b1: Any = 0.95, b2: Any = 0.99, eps: Any = 1e-8, gamma: Any = 0.025,
                  variant: str = "adamw", b1_1d: Any = 0.9, b2_1d: Any = 0.95,
                  eps_1d: Any = None, mu_dtype: Any = None,
                  batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformation:
  """The MARS direction for matrices and the Adam direction for vectors."""
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  eps_1d = eps if eps_1d is None else eps_1d

  def init_fn(params):
    is_matrix = _is_matrix_tree(params, batch_axes)
    placeholder = lambda p: jnp.zeros([], p.dtype)
    nu = jax.tree.map(
        lambda p, mat: jnp.zeros_like(p) if (variant == "adamw" or not mat) else placeholder(p),
        params, is_matrix)
    prev = jax.tree.map(lambda p, mat: jnp.zeros_like(p) if mat else placeholder(p),
                        params, is_matrix)
    return ScaleByMarsState(count=jnp.zeros([], jnp.int32),
                            mu=optax.tree.zeros_like(params, dtype=mu_dtype), nu=nu,
                            prev_grad=prev)

  def update_fn(updates, state, params=None):
    del params
    is_matrix = _is_matrix_tree(updates, batch_axes)
    n_batch = labels.resolve_batch_axes(updates, batch_axes)
    count = optax.safe_increment(state.count)
    first = state.count == 0
    correction = gamma * b1 / (1.0 - b1)

    def leaf(g, m, v, prev, mat, nb):
      if not mat:  # plain Adam with the 1-D betas
        m = b1_1d * m + (1.0 - b1_1d) * g
        v = b2_1d * v + (1.0 - b2_1d) * jnp.square(g)
        m_hat = m / (1.0 - b1_1d ** count)
        v_hat = v / (1.0 - b2_1d ** count)
        return m_hat / (jnp.sqrt(v_hat) + eps_1d), m, v, prev
      c = jnp.where(first, g, g + correction * (g - prev))
      c = _clip_to_unit_norm(c, nb)
      m = b1 * m + (1.0 - b1) * c
      if variant == "lion":
        return jnp.sign(m).astype(g.dtype), m, v, g
      v = b2 * v + (1.0 - b2) * jnp.square(c)
      m_hat = m / (1.0 - b1 ** count)
      v_hat = v / (1.0 - b2 ** count)
      return m_hat / (jnp.sqrt(v_hat) + eps), m, v, g

    out = jax.tree.map(leaf, updates, state.mu, state.nu, state.prev_grad, is_matrix, n_batch)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)
    return pick(0), ScaleByMarsState(count=count, mu=optax.tree.cast(pick(1), mu_dtype),
                                     nu=pick(2), prev_grad=pick(3))

  return optax.GradientTransformation(init_fn, update_fn)


def mars(learning_rate: Any, b1: float = 0.95, b2: float = 0.99, eps: float = 1e-8,
         gamma: float = 0.025, variant: str = "adamw", weight_decay: Any = 0.0,
         mask: Any = None, learning_rate_1d: Any = None, b1_1d: float = 0.9,
         b2_1d: float = 0.95, mu_dtype: Any = None,
         batch_axes: labels.BatchAxesSpec = None) -> optax.GradientTransformationExtraArgs:
  """MARS (approximate) for matrices, AdamW for vectors.

  Args:
    learning_rate: matrix learning rate, scalar or schedule, >= 0.
    b1, b2: MARS moment rates in [0, 1) (paper defaults 0.95, 0.99). b2 is unused by 'lion'.
    eps: > 0, added to sqrt(v^).
    gamma: >= 0 variance-reduction strength (0.025; 0 gives AdamW/Lion on clipped gradients).
    variant: 'adamw' (MARS-AdamW) or 'lion' (MARS-Lion).
    weight_decay: >= 0, scalar or schedule, multiplied by the learning rate (both groups).
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    learning_rate_1d: learning rate of the vector AdamW group (None: ``learning_rate``).
    b1_1d, b2_1d: AdamW betas of the vector group (the paper's code: 0.9, 0.95).
    mu_dtype: dtype of the first moment (default: the parameter's).
    batch_axes: leading batch axes of stacked layers / experts (see ``labels``).
  """
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_non_negative("gamma", gamma)
  hyperparams.check_choice("variant", variant, VARIANTS)
  hyperparams.check_beta("b1_1d", b1_1d)
  hyperparams.check_beta("b2_1d", b2_1d)
  direction = scale_by_mars(b1, b2, eps, gamma, variant, b1_1d, b2_1d, None, mu_dtype,
                            batch_axes)
  if learning_rate_1d is None:
    return optax.chain(direction, decay_and_scale(learning_rate, weight_decay, mask))
  hyperparams.check_learning_rate("learning_rate_1d", learning_rate_1d)
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_non_negative("weight_decay", weight_decay)
  group = lambda params: jax.tree.map(lambda mat: "matrix" if mat else "vector",
                                      _is_matrix_tree(params, batch_axes))
  return optax.chain(
      direction,
      optax.add_decayed_weights(weight_decay, mask),
      optax.partition({"matrix": optax.scale_by_learning_rate(learning_rate),
                       "vector": optax.scale_by_learning_rate(learning_rate_1d)}, group),
  )


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(mars, width_rules.ELEMENTWISE)
