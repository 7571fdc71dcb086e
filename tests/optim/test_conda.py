"""Conda against a float64 NumPy reference, and AdamW on the rest.

The generic properties are in test_contract_builtins, the sharded transformer layout
in test_muon (the Muon family).

The reference is written from Wang et al. 2025 (arXiv:2509.24218): Adam's
moments with the second moment taken of the gradient projected onto the
momentum's singular vectors, the basis refreshed by an SVD every T steps. It
works in the PyTorch orientation of the authors' code (``(out, in)`` weights)
and is transposed to Flax kernels. Where paper and code differ it follows the
code (conda_torch/conda.py, projector.py, proj_type="std"): right singular
vectors when rows >= cols (the paper says left for m <= n, so square weights
differ), the basis from m_t after this step's update, v not rotated on a
refresh, and the step size lr sqrt(1 - b2^t) / (1 - b1^t) with eps on the
uncorrected sqrt(v). Weight decay is the shared p - lr (u + wd p).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing
from tests.optim.test_muon import transformer_tree


def reference_conda(kernel, grads, lr, b1, b2, eps, scale, gap, wd):
  """Conda on one Flax (fan_in, fan_out) kernel, computed on W = kernel^T (out, in)."""
  w = np.asarray(kernel, np.float64).T
  right = w.shape[0] >= w.shape[1]   # the code's "std" rule
  m = np.zeros_like(w)
  v = np.zeros_like(w)
  out = []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64).T
    m = b1 * m + (1 - b1) * g
    if (t - 1) % gap == 0:
      u_svd, _, vh = np.linalg.svd(m, full_matrices=False)
      basis = vh if right else u_svd
    project = (lambda x: x @ basis.T) if right else (lambda x: basis.T @ x)
    v = b2 * v + (1 - b2) * project(g) ** 2
    normalised = project(m) / (np.sqrt(v) + eps)
    back = normalised @ basis if right else basis @ normalised
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    w = w - step * scale * back - lr * wd * w
    out.append(w.T)
  return out


@pytest.mark.parametrize("shape", [(8, 12), (12, 8), (8, 8)])
def test_matches_reference(shape):
  rng = np.random.default_rng(0)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32)}}
  grads = testing.make_grads(params, 20)  # 20 steps: SVD refreshes at t = 1, 6, 11, 16
  tx = O.conda(1e-2, b1=0.9, b2=0.99, scale=0.25, update_proj_gap=5, weight_decay=0.1)
  traj = testing.run_trajectory(tx, params, grads)
  ref = reference_conda(params["w"]["kernel"], [g["w"]["kernel"] for g in grads],
                        1e-2, 0.9, 0.99, 1e-8, 0.25, 5, 0.1)
  testing.assert_trajectory_close(traj, [{"w": {"kernel": r}} for r in ref],
                                  rtol=2e-5, atol=2e-6)


def test_basis_refreshes_only_every_update_proj_gap_steps():
  rng = np.random.default_rng(1)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)}}
  tx = O.conda(1e-2, update_proj_gap=3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  bases = []
  for g in testing.make_grads(params, 7):
    _, state = update(g, state, params)
    bases.append(np.asarray(optax.tree.get(state, "basis")["w"]["kernel"]))
  changed = [not np.allclose(a, b) for a, b in zip(bases, bases[1:])]
  assert changed == [False, False, True, False, False, True], changed  # new at t = 4, 7
  np.testing.assert_allclose(bases[0] @ bases[0].T, np.eye(6), atol=1e-5)  # orthogonal


def test_non_matrix_leaves_follow_adamw_with_the_shared_settings():
  params, batch_axes, _ = transformer_tree(layers=4)
  grads = testing.make_grads(params, 5)
  traj = testing.run_trajectory(
      O.conda(1e-2, b1=0.8, b2=0.95, weight_decay=0.1, batch_axes=batch_axes), params, grads)
  pick = lambda t: {"embed": t["embed"], "final_norm": t["final_norm"],
                    "lm_head": t["lm_head"], "norm": t["layers"]["attn_norm"]}
  mask = {"embed": {"embedding": False}, "final_norm": {"scale": False},
          "lm_head": {"kernel": True}, "norm": {"scale": False}}
  expected = testing.run_trajectory(
      optax.adamw(1e-2, b1=0.8, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask),
      pick(params), [pick(g) for g in grads])
  testing.assert_trajectory_close([pick(t) for t in traj], expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(adam_learning_rate=-1.0), "adam_learning_rate"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.5), "b2"),
    (dict(eps=0.0), "eps"),
    (dict(scale=0.0), "scale"),
    (dict(update_proj_gap=0), "update_proj_gap"),
    (dict(update_proj_gap=2.5), "update_proj_gap"),
    (dict(adam_b2=1.5), "adam_b2"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(adam_weight_decay=-0.1), "adam_weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.conda(**bad)
