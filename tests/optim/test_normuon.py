"""NorMuon against a float64 NumPy reference, and AdamW on the rest.

The generic properties are in test_contract_builtins, the sharded transformer layout
in test_muon (the Muon family).

The reference is written from Li et al. 2025 (arXiv:2510.05491) in the
PyTorch orientation of the authors' code (weights ``(out, in)``, neurons =
rows, statistics over ``dim=-1``) and transposed to Flax kernels, so it also
checks that the neurons are the columns of a ``(fan_in, fan_out)`` kernel.
Where paper and code differ, the reference follows the code (EMA momentum with
the lerp form of Nesterov, no bias correction of v, eps 1e-10, the
norm-preserving Muon rescale) and tests the paper's RMS rescale as an option.
"""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import linalg
from optbench_jax.optim import testing
from tests.optim.test_linalg_newton_schulz import reference_newton_schulz
from tests.optim.test_muon import transformer_tree

NS5 = [linalg.CLASSIC_COEFFICIENTS] * 5


def reference_normuon(kernel, grads, lr, beta, beta2, wd, rescale, nesterov=True, eps=1e-10):
  """NorMuon on one Flax (fan_in, fan_out) kernel, computed on W = kernel^T (out, in)."""
  w = np.asarray(kernel, np.float64).T
  m = np.zeros_like(w)
  v = np.zeros((w.shape[0], 1))
  out = []
  for g in grads:
    g = np.asarray(g, np.float64).T
    m = beta * m + (1 - beta) * g
    d = (1 - beta) * g + beta * m if nesterov else m
    o = reference_newton_schulz(d, NS5)
    v = beta2 * v + (1 - beta2) * np.mean(o * o, axis=1, keepdims=True)  # per output row
    o_hat = o / (np.sqrt(v) + eps)
    if rescale == "muon":
      u = o_hat * np.linalg.norm(o) / (np.linalg.norm(o_hat) + eps)
      u = u * math.sqrt(max(1.0, w.shape[0] / w.shape[1]))
    else:
      u = 0.2 * math.sqrt(w.size) * o_hat / (np.linalg.norm(o_hat) + eps)
    w = w - lr * (u + wd * w)
    out.append(w.T)
  return out


@pytest.mark.parametrize("shape, rescale, nesterov", [
    ((8, 12), "muon", True), ((12, 8), "muon", True), ((12, 8), "rms", True),
    ((8, 12), "rms", False)])
def test_matches_reference(shape, rescale, nesterov):
  rng = np.random.default_rng(0)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32)}}
  grads = testing.make_grads(params, 20)  # 20 steps
  tx = O.normuon(0.03, beta=0.9, beta2=0.8, nesterov=nesterov, rescale=rescale,
                 weight_decay=0.1)
  traj = testing.run_trajectory(tx, params, grads)
  ref = reference_normuon(params["w"]["kernel"], [g["w"]["kernel"] for g in grads],
                          0.03, 0.9, 0.8, 0.1, rescale, nesterov)
  testing.assert_trajectory_close(traj, [{"w": {"kernel": r}} for r in ref],
                                  rtol=2e-5, atol=2e-6)


def test_neurons_are_columns_of_a_flax_kernel():
  """With beta2 = 0 every output neuron (column) of the update has the same norm."""
  rng = np.random.default_rng(1)
  kernel = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
  grads = testing.make_grads({"k": kernel}, 1)
  traj = testing.run_trajectory(O.normuon(0.1, beta2=0.0, weight_decay=0.0),
                                {"k": kernel}, grads)
  delta = np.asarray(traj[0]["k"] - kernel, np.float64)
  column_norms = np.linalg.norm(delta, axis=0)
  np.testing.assert_allclose(column_norms, column_norms.mean(), rtol=1e-4)
  assert np.ptp(np.linalg.norm(delta, axis=1)) > 1e-3  # the rows are not equalised


def test_non_matrix_leaves_follow_adamw_with_the_shared_weight_decay():
  params, batch_axes, _ = transformer_tree(layers=4)
  grads = testing.make_grads(params, 5)
  traj = testing.run_trajectory(
      O.normuon(0.02, weight_decay=0.1, adam_learning_rate=3e-3, batch_axes=batch_axes),
      params, grads)
  pick = lambda t: {"embed": t["embed"], "final_norm": t["final_norm"],
                    "lm_head": t["lm_head"], "norm": t["layers"]["attn_norm"]}
  # adam_weight_decay=None takes weight_decay; the untied head is decayed, the rest not.
  mask = {"embed": {"embedding": False}, "final_norm": {"scale": False},
          "lm_head": {"kernel": True}, "norm": {"scale": False}}
  expected = testing.run_trajectory(
      optax.adamw(3e-3, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.1, mask=mask),
      pick(params), [pick(g) for g in grads])
  testing.assert_trajectory_close([pick(t) for t in traj], expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("bad, match", [
    (dict(ns_steps=0), "ns_steps"),
    (dict(ns_coefficients="cubic"), "preset"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(adam_learning_rate=-1.0), "adam_learning_rate"),
    (dict(beta=1.0), "beta"),
    (dict(beta2=-0.1), "beta2"),
    (dict(eps=0.0), "eps"),
    (dict(rescale="spectral"), "rescale"),
    (dict(adam_b2=1.5), "adam_b2"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(adam_weight_decay=-0.1), "adam_weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.normuon(**bad)
