"""Small trees and trajectories for testing optimizers: the contract's and the tests' fixtures.

``make_params`` is a tree with a matrix, a vector and a stacked (3, 5, 4) leaf;
``make_grads`` draws gradient trees for it; ``run_trajectory`` applies a
transformation along them; ``assert_trajectory_close`` compares two
trajectories leaf by leaf; ``trains_mlp`` trains a tiny tanh MLP regression,
calling ``update`` as the trainer's step does. Nothing here knows any optimizer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

N_STEPS = 6


def make_params(seed: int = 0, dtype=jnp.float32) -> dict:
  """A small tree with a 2-D matrix, a 1-D vector and a 3-D stacked leaf."""
  rng = np.random.default_rng(seed)
  return {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(8, 6)), dtype)},
      "norm": {"scale": jnp.asarray(1.0 + 0.1 * rng.normal(size=(6,)), dtype)},
      "layers": {"kernel": jnp.asarray(rng.normal(size=(3, 5, 4)), dtype)},
  }


# Leading batch axes of make_params' leaves, for optimizers that need them.
BATCH_AXES = {"dense": {"kernel": 0}, "norm": {"scale": 0}, "layers": {"kernel": 1}}


def make_grads(params: Any, n_steps: int = N_STEPS, seed: int = 1) -> list:
  """``n_steps`` random gradient trees shaped like ``params`` (float32)."""
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
          for _ in range(n_steps)]


def run_trajectory(tx: optax.GradientTransformation, params: Any, grads: list,
                   jit: bool = True, **extra_args) -> list:
  """Applies ``tx`` along ``grads``; returns the parameters after every step."""
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  out = []
  for g in grads:
    g = jax.tree.map(lambda gi, p: gi.astype(p.dtype), g, params)
    updates, state = update(g, state, params, **extra_args)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


def to_numpy(tree: Any) -> Any:
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def assert_trajectory_close(actual: list, expected: list, rtol: float = 1e-6,
                            atol: float = 1e-6) -> None:
  """Compares two trajectories step by step, leaf by leaf."""
  assert len(actual) == len(expected)
  for step, (a, e) in enumerate(zip(actual, expected)):
    a_leaves = jax.tree_util.tree_leaves_with_path(to_numpy(a))
    e_leaves = jax.tree.leaves(to_numpy(e))
    for (path, x), y in zip(a_leaves, e_leaves):
      np.testing.assert_allclose(
          x, y, rtol=rtol, atol=atol,
          err_msg=f"step {step + 1}, leaf {jax.tree_util.keystr(path)}")


# The MLP regression: 64 examples of 8 inputs, 4 outputs.
MLP_EXAMPLES, MLP_INPUTS, MLP_OUTPUTS = 64, 8, 4
# The squared errors its loss averages: the "tokens" of a per-token mean loss
# (the trainer-owned ``batch_size`` of an optimizer that rescales by it, Sophia-G).
MLP_BATCH_SIZE = MLP_EXAMPLES * MLP_OUTPUTS


def mlp_predict(params: Any, x: jnp.ndarray) -> jnp.ndarray:
  h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return h @ params["out"]["kernel"]


def mlp_loss(params: Any, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  return jnp.mean((mlp_predict(params, x) - y) ** 2)


def trains_mlp(tx: optax.GradientTransformation, steps: int = 200, max_ratio: float = 0.5,
               **extra_args) -> tuple[float, float]:
  """Trains a tiny tanh MLP regression from a fixed seed; loss must fall below max_ratio x start.

  Every ``update`` gets the trainer's two extra arguments (``train/step.py``),
  unless ``extra_args`` gives them: ``obj_fn``, the batch loss, and
  ``hessian_grads_fn``, the gradient at labels sampled from the model's own
  predictive distribution -- for this mean squared error, the Gaussian whose
  negative log-likelihood it is: y ~ N(f(x), 1/2) (Sophia-G's
  Gauss-Newton-Bartlett estimator, Liu et al. 2024, Alg. 2).
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(MLP_EXAMPLES, MLP_INPUTS)), jnp.float32)
  teacher = rng.normal(size=(MLP_INPUTS, 16)) / np.sqrt(MLP_INPUTS)
  y = jnp.asarray(np.sin(np.asarray(x) @ teacher) @ rng.normal(size=(16, MLP_OUTPUTS)),
                  jnp.float32)
  params = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(MLP_INPUTS, 16)) * 0.3,
                                             jnp.float32),
                       "bias": jnp.zeros((16,), jnp.float32)},
            "out": {"kernel": jnp.asarray(rng.normal(size=(16, MLP_OUTPUTS)) * 0.3,
                                          jnp.float32)}}
  state = tx.init(params)
  sample_key = jax.random.PRNGKey(0)

  @jax.jit
  def step(params, state, t):
    loss, g = jax.value_and_grad(mlp_loss)(params, x, y)

    def hessian_grads_fn():
      noise = jax.random.normal(jax.random.fold_in(sample_key, t), y.shape) * np.sqrt(0.5)
      sampled = jax.lax.stop_gradient(mlp_predict(params, x)) + noise
      return jax.grad(mlp_loss)(params, x, sampled)

    trainer_args = {"hessian_grads_fn": hessian_grads_fn,
                    "obj_fn": lambda p: mlp_loss(p, x, y), **extra_args}
    updates, state = optax.with_extra_args_support(tx).update(g, state, params, **trainer_args)
    return optax.apply_updates(params, updates), state, loss

  first = float(mlp_loss(params, x, y))
  for t in range(steps):
    params, state, _ = step(params, state, t)
  last = float(mlp_loss(params, x, y))
  assert np.isfinite(last) and last < max_ratio * first, (
      f"the loss went from {first:.4g} to {last:.4g} in {steps} steps (needs < {max_ratio} x)")
  return first, last
