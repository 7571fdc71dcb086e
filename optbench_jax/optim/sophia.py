"""Sophia: clipped diagonal-Hessian preconditioning (Liu et al. 2023).

"Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", arXiv:2305.14342, Algorithm 3. With t counting calls of
``update`` from 1 and k = ``update_interval``:

    m_t = b1 m_{t-1} + (1 - b1) g_t                        (no bias correction)
    if (t - 1) % k == 0:  h_t = b2 h_{t-k} + (1 - b2) h^_t  else  h_t = h_{t-1}
    u_t = clip(m_t / max(rho h_t, eps), -1, 1)
    p   <- p - lr (u_t + wd p)                            (decoupled weight decay)

The estimate h^_t is refreshed on steps 1, k+1, 2k+1, ... (``count % k == 0``
before the increment) and used on that same step, as in the paper's algorithm.
Two estimators:

* ``estimator="gnb"`` (Sophia-G, default): Gauss-Newton-Bartlett,
  ``h^ = batch_size * hessian_grads ** 2``. ``rho h`` is then the authors'
  code's ``rho * bs * hess`` with ``hess`` the EMA of squared gradients and
  ``bs`` the tokens the sampled gradient is taken over. (Semenov et al.'s
  benchmark loop takes it on one micro-batch, divided by the accumulation
  steps, with ``bs`` = 480 x seq_len: 0.234 x this scale in their 124M setup,
  so their rho 0.04 is 0.0094 here.)
* ``estimator="hutchinson"`` (Sophia-H): ``h^ = z * (H z)`` with z a
  Rademacher probe drawn from a PRNG key kept in the state, ``H z`` a
  Hessian-vector product of the objective ``obj_fn`` (as optax.contrib.sophia).

Contract for the caller (extra keyword arguments of ``update``; one of them is
required on *every* call, because under ``jit`` the step count is not known at
trace time; they are only evaluated on refresh steps, inside Sophia's own
``lax.cond``, so the update interval lives here and nowhere else):

* Sophia-G: ``hessian_grads_fn=`` a zero-argument function returning a pytree
  like the gradients: the gradient, at the current parameters, of the *mean*
  cross-entropy over the current batch (``batch_size`` tokens) with the
  targets replaced by labels **sampled from the model's own output
  distribution** (``categorical(logits)``, gradient not taken through the
  sampling). Sophia calls it only on refresh steps (``count % update_interval
  == 0``), so the extra backward pass costs nothing on the others. (Or
  ``hessian_grads=`` that tree itself, computed by the caller.)
* Sophia-H: ``obj_fn=`` a function ``params -> scalar loss`` on the current
  batch; its Hessian-vector product is taken only on refresh steps.

The trainer's step passes both functions to every optimizer; the others
ignore them.

Across devices, ``hessian_grads`` (or the loss inside ``obj_fn``) must already
be averaged over the global batch, like the gradient.

Deviations from optax.contrib.sophia (kept to follow the paper and the
authors' code): no bias correction of m; the refreshed h is used on the step
it is computed (optax uses the previous one); the denominator is
``max(rho h, eps)`` with h carrying the batch-size factor for Sophia-G.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optbench_jax.optim import hyperparams
from optbench_jax.optim.scaling import decay_and_scale
from optbench_jax.optim import width_rules

ESTIMATORS = ("gnb", "hutchinson")


class ScaleBySophiaState(NamedTuple):
  """``count``: steps taken; ``mu``: momentum; ``hessian``: EMA of the diagonal
  Hessian estimates; ``key``: PRNG key (uint32[2]) for Hutchinson probes."""
  count: jax.Array
  mu: Any
  hessian: Any
  key: jax.Array



def hutchinson_diagonal(obj_fn, params: Any, key: jax.Array) -> Any:
  """z * (H z) for a Rademacher z drawn from ``key`` (one probe per leaf)."""
  signs = optax.tree.random_like(key, params, jax.random.rademacher, dtype=jnp.float32)
  signs = jax.tree.map(lambda z, p: z.astype(p.dtype), signs, params)
  hvp = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
  return jax.tree.map(lambda z, hz: (z * hz).astype(jnp.float32), signs, hvp)


def scale_by_sophia(b1: float = 0.965, b2: float = 0.99, rho: float = 0.04,
                    eps: float = 1e-15, update_interval: int = 10,
                    estimator: str = "gnb", batch_size: int = 131072, seed: int = 0
                    ) -> optax.GradientTransformationExtraArgs:
  """The clipped Sophia direction (see the module docstring); arguments as :func:`sophia`."""
  hyperparams.check_beta("b1", b1)
  hyperparams.check_beta("b2", b2)
  hyperparams.check_positive("rho", rho)
  hyperparams.check_positive("eps", eps)
  hyperparams.check_int_at_least("update_interval", update_interval, 1)
  hyperparams.check_choice("estimator", estimator, ESTIMATORS)
  hyperparams.check_int_at_least("batch_size", batch_size, 1)
  hyperparams.check_int_at_least("seed", seed, 0)

  def init_fn(params):
    zeros = lambda p: jnp.zeros(p.shape, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment
    return ScaleBySophiaState(count=jnp.zeros([], jnp.int32),
                              mu=jax.tree.map(zeros, params),
                              hessian=jax.tree.map(zeros, params),
                              key=jax.random.PRNGKey(seed))

  def update_fn(updates, state, params=None, hessian_grads=None, hessian_grads_fn=None,
                obj_fn=None, **extra_args):
    del extra_args
    if estimator == "gnb" and hessian_grads is None and hessian_grads_fn is None:
      raise ValueError(
          "sophia (estimator='gnb') needs update(..., hessian_grads_fn=...) (or "
          "hessian_grads=...): the gradient of the loss on labels sampled from the model's "
          "own logits (see the sophia docstring)")
    if estimator == "hutchinson":
      if obj_fn is None:
        raise ValueError("sophia (estimator='hutchinson') needs update(..., obj_fn=...): "
                         "a function params -> scalar loss on the current batch")
      if params is None:
        raise ValueError("sophia (estimator='hutchinson') needs params in update")
    def sampled_grads():
      tree = hessian_grads if hessian_grads is not None else hessian_grads_fn()
      if jax.tree.structure(tree) != jax.tree.structure(updates):
        raise ValueError("hessian_grads must have the same tree structure as the gradients")
      return tree

    if hessian_grads is not None:
      sampled_grads()    # structure errors surface before the cond is traced

    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g.astype(jnp.float32),
                      state.mu, updates)

    def refresh(hessian, key):
      if estimator == "gnb":
        estimate = jax.tree.map(lambda hg: batch_size * jnp.square(hg.astype(jnp.float32)),
                                sampled_grads())
      else:
        key, probe_key = jax.random.split(key)
        estimate = hutchinson_diagonal(obj_fn, params, probe_key)
      return jax.tree.map(lambda h, e: b2 * h + (1 - b2) * e, hessian, estimate), key

    hessian, key = jax.lax.cond(state.count % update_interval == 0, refresh,
                                lambda h, k: (h, k), state.hessian, state.key)
    out = jax.tree.map(
        lambda m, h, g: jnp.clip(m / jnp.maximum(rho * h, eps), -1.0, 1.0).astype(g.dtype),
        mu, hessian, updates)
    return out, ScaleBySophiaState(count=optax.safe_increment(state.count), mu=mu,
                                   hessian=hessian, key=key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sophia(learning_rate: Any, b1: float = 0.965, b2: float = 0.99, rho: float = 0.04,
           eps: float = 1e-15, weight_decay: Any = 1e-4, mask: Any = None,
           update_interval: int = 10, estimator: str = "gnb", batch_size: int = 131072,
           seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Sophia-G (default) or Sophia-H with decoupled weight decay.

  Defaults: betas (0.965, 0.99), rho 0.04, k = 10 as the paper's code;
  Semenov et al. (2025) use lr 1e-3, betas (0.9, 0.999), rho 0.04.

  Args:
    learning_rate: scalar or schedule, >= 0.
    b1: momentum EMA rate in [0, 1). b2: Hessian EMA rate in [0, 1), applied
      once every ``update_interval`` steps.
    rho: > 0, the paper's gamma; scales the Hessian in the denominator.
    eps: > 0, floor of the denominator.
    weight_decay: >= 0 (scalar or schedule), multiplied by the learning rate.
    mask: which leaves are decayed (see ``labels.weight_decay_mask``).
    update_interval: >= 1, steps between Hessian refreshes (k).
    estimator: ``"gnb"`` (Sophia-G, needs ``hessian_grads_fn=`` or ``hessian_grads=``) or
      ``"hutchinson"`` (Sophia-H, needs ``obj_fn=``).
    batch_size: >= 1, tokens over which ``hessian_grads``' loss is averaged
      (Sophia-G's Bartlett scaling). Default 131072 = 256 x 512, the 124M
      setup of Semenov et al.; set it to your global tokens per step.
    seed: >= 0, seeds the Hutchinson probes.
  """
  return optax.chain(
      scale_by_sophia(b1, b2, rho, eps, update_interval, estimator, batch_size, seed),
      decay_and_scale(learning_rate, weight_decay, mask),
  )


# How each factory's learning rate moves with width (width_rules).
width_rules.declare(sophia, width_rules.ELEMENTWISE)
