"""Prodigy (Mishchenko & Defazio 2023, "Prodigy: An Expeditiously Adaptive
Parameter-Free Learner", arXiv:2306.06101), Adam form.

Adam whose step size d is estimated online from the distance travelled from
the initial point x_0. With t >= 1, eta_t the learning-rate schedule (1.0 times
a warmup/decay shape), bc_t = sqrt(1 - b2^t) / (1 - b1^t) (1 without bias
correction), and d_lr = d_{t-1} eta_t bc_t:

    m_t  = b1 m_{t-1} + (1 - b1) d_{t-1} g_t
    v_t  = b2 v_{t-1} + (1 - b2) d_{t-1}^2 g_t^2
    s_t  = b3 s_{t-1} + (d_lr / d_0) d_{t-1} g_t      (safeguard_warmup: d_{t-1} for d_lr)
    r_t  = b3 r_{t-1} + (d_{t-1} / d_0) d_lr <g_t, x_0 - x_{t-1}>
    d_t  = max(d_{t-1}, coef * r_t / ||s_t||_1)       (d grows monotonically)
    x_t  = x_{t-1} - eta_t d_{t-1} bc_t (m_t / (sqrt(v_t) + d_t eps) + wd x_{t-1})

with b3 = sqrt(b2) by default and d_0 = ``estim_lr0``. This is the trajectory
of ``optax.contrib.prodigy`` (which always bias-corrects) with the same
arguments; the benchmark study runs Prodigy with bias correction (lr 1.0,
betas (0.9, 0.999)). optax's tuple ``betas`` is spelled ``b1, b2`` here, like
every other optimizer in this package, so sweeps and ``inject_hyperparams``
see scalars.

Structure: weight decay is multiplied by the adaptive step d bc as well as by
the learning rate, so it is applied inside ``scale_by_prodigy`` (masked, via
``optax.add_decayed_weights``) before the d bc scaling; the learning rate tail
follows as in every other optimizer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams


class ScaleByProdigyState(NamedTuple):
  count: jax.Array        # int32 scalar: steps taken so far
  exp_avg: Any            # m (EMA of d g)
  exp_avg_sq: Any         # v (EMA of d^2 g^2)
  grad_sum: Any           # s (weighted sum of d g)
  params0: Any            # x_0
  estim_lr: jax.Array     # d, float32 scalar
  numerator_weighted: jax.Array  # r, float32 scalar
  decay_state: Any        # state of the (possibly scheduled) weight decay


def scale_by_prodigy(learning_rate: Any = 1.0, b1: Any = 0.9, b2: Any = 0.999,
                     beta3: Any = None, eps: Any = 1e-8, estim_lr0: Any = 1e-6,
                     estim_lr_coef: Any = 1.0, weight_decay: Any = 0.0, mask: Any = None,
                     use_bias_correction: bool = True,
                     safeguard_warmup: bool = False) -> optax.GradientTransformation:
  """The Prodigy step d bc (m / (sqrt(v) + d eps) + wd x), to be scaled by ``-learning_rate``."""
  decay = optax.add_decayed_weights(weight_decay, mask)

  def init_fn(params):
    return ScaleByProdigyState(
        count=jnp.zeros([], jnp.int32), exp_avg=optax.tree.zeros_like(params),
        exp_avg_sq=optax.tree.zeros_like(params), grad_sum=optax.tree.zeros_like(params),
        params0=jax.tree.map(jnp.copy, params),
        estim_lr=jnp.asarray(estim_lr0, jnp.float32),
        numerator_weighted=jnp.zeros([], jnp.float32), decay_state=decay.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("prodigy needs params in update (it measures x_0 - x)")
    b3 = jnp.sqrt(b2) if beta3 is None else beta3
    count = optax.safe_increment(state.count)
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
    bc = (jnp.sqrt(1.0 - b2 ** count) / (1.0 - b1 ** count)) if use_bias_correction else 1.0
    d = state.estim_lr
    d_lr = d * eta * bc
    dg = jax.tree.map(lambda g: d * g, updates)
    exp_avg = jax.tree.map(lambda m, x: b1 * m + (1.0 - b1) * x, state.exp_avg, dg)
    exp_avg_sq = jax.tree.map(lambda v, x: b2 * v + (1.0 - b2) * x * x, state.exp_avg_sq, dg)
    s_weight = d if safeguard_warmup else d_lr
    grad_sum = jax.tree.map(lambda s, x: b3 * s + s_weight * x / estim_lr0, state.grad_sum, dg)
    travelled = optax.tree.vdot(updates, jax.tree.map(jnp.subtract, state.params0, params))
    numerator = b3 * state.numerator_weighted + (d / estim_lr0) * d_lr * travelled
    denominator = optax.tree.sum(jax.tree.map(jnp.abs, grad_sum))
    # With eta = 0 (a warmup starting at zero) s and r stay 0 and the estimate is
    # 0/0: keep d, as the authors' PyTorch code does (it skips the estimate when
    # lr == 0). optax.contrib.prodigy returns NaN there.
    safe_denominator = jnp.where(denominator > 0, denominator, 1.0)
    estimate = jnp.where(denominator > 0, estim_lr_coef * numerator / safe_denominator, 0.0)
    new_d = jnp.maximum(d, estimate)
    direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + new_d * eps), exp_avg, exp_avg_sq)
    direction, decay_state = decay.update(direction, state.decay_state, params)
    step = jax.tree.map(lambda u, p: (d * bc * u).astype(p.dtype), direction, params)
    return step, ScaleByProdigyState(
        count=count, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, grad_sum=grad_sum,
        params0=state.params0, estim_lr=new_d.astype(jnp.float32),
        numerator_weighted=numerator.astype(jnp.float32), decay_state=decay_state)

  return optax.GradientTransformation(init_fn, update_fn)


def prodigy(learning_rate: Any = 1.0, b1: float = 0.9, b2: float = 0.999, beta3: Any = None,
            eps: float = 1e-8, estim_lr0: float = 1e-6, estim_lr_coef: float = 1.0,
            weight_decay: Any = 0.0, mask: Any = None, use_bias_correction: bool = True,
            safeguard_warmup: bool = False) -> optax.GradientTransformationExtraArgs:
  """Prodigy (Adam form) with bias correction.

  Args:
    learning_rate: multiplier of the estimated step, scalar or schedule (1.0 under a
      warmup/decay shape, as the paper and the benchmark study).
    b1, b2: Adam rates in [0, 1).
    beta3: rate of the d-estimate sums in [0, 1) (None: sqrt(b2)).
    eps: > 0, added to sqrt(v) (scaled by d).
    estim_lr0: d_0 > 0, the initial under-estimate of the step size.
    estim_lr_coef: > 0, multiplies the d estimate (the paper's d_coef).
    weight_decay: >= 0, scalar or schedule, multiplied by lr * d * bc.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    use_bias_correction: Adam bias correction folded into the step (bc_t above).
    safeguard_warmup: leave the learning rate out of the s update (helps warmup).
  """
  hyperparams.check_learning_rate("learning_rate", learning_rate)
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  if beta3 is not None:
    hyperparams.check_beta("beta3", beta3)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_positive("estim_lr0", estim_lr0)
  hyperparams.check_positive("estim_lr_coef", estim_lr_coef)
  hyperparams.check_non_negative("weight_decay", weight_decay)
  return optax.chain(
      scale_by_prodigy(learning_rate, b1, b2, beta3, eps, estim_lr0, estim_lr_coef,
                       weight_decay, mask, use_bias_correction, safeguard_warmup),
      optax.scale_by_learning_rate(learning_rate),
  )
