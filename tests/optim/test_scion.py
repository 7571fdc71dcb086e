"""Scion against a float64 NumPy reference written from the paper's LMOs."""

import math

import jax
import numpy as np
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import linalg
from optbench_jax.optim import testing
from optbench_jax.optim import sharding_check
from tests.optim.test_linalg_newton_schulz import reference_newton_schulz
from tests.optim.test_muon import transformer_tree

NS5 = [linalg.CLASSIC_COEFFICIENTS] * 5


def reference_lmo(path, m, embedding_lmo, head_lmo, radii):
  """Flax-orientation LMOs (kernels (fan_in, fan_out), embeddings (V, d))."""
  if path.endswith("embedding"):
    if embedding_lmo == "sign":
      return radii["embedding"] * np.sign(m) / m.shape[-1]
    return radii["embedding"] * m / (np.sqrt(np.mean(m**2, -1, keepdims=True)) + 1e-8)
  if path.startswith("lm_head"):
    if head_lmo == "sign":
      return radii["head"] * np.sign(m) / m.shape[-2]
    col = np.linalg.norm(m, axis=-2, keepdims=True)
    return radii["head"] * m / (math.sqrt(m.shape[-2]) * col + 1e-8)
  if "scale" in path:
    return radii["vector"] * m / (np.sqrt(np.mean(m**2, -1, keepdims=True)) + 1e-8)
  mats = m.reshape((-1,) + m.shape[-2:])
  out = np.stack([reference_newton_schulz(x, NS5) for x in mats]).reshape(m.shape)
  return radii["hidden"] * out * math.sqrt(m.shape[-1] / m.shape[-2])


def reference_scion(params, grads, lr, beta, wd, decayed, embedding_lmo, head_lmo, radii):
  flat = {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v, np.float64)
          for k, v in jax.tree_util.tree_leaves_with_path(params)}
  mom = {k: np.zeros_like(v) for k, v in flat.items()}
  out = []
  for g in grads:
    gflat = {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v, np.float64)
             for k, v in jax.tree_util.tree_leaves_with_path(g)}
    for k in flat:
      mom[k] = beta * mom[k] + (1 - beta) * gflat[k]
      u = reference_lmo(k, mom[k], embedding_lmo, head_lmo, radii)
      flat[k] = flat[k] - lr * (u + (wd * flat[k] if decayed(k) else 0.0))
    out.append(jax.tree.unflatten(jax.tree.structure(params),
                                  [flat[jax.tree_util.keystr(k, simple=True, separator="/")]
                                   for k, _ in jax.tree_util.tree_leaves_with_path(params)]))
  return out


@pytest.mark.parametrize("embedding_lmo, head_lmo, constrained", [
    ("sign", "sign", False), ("row_norm", "col_norm", False), ("sign", "sign", True)])
def test_matches_reference(embedding_lmo, head_lmo, constrained):
  params, batch_axes, _ = transformer_tree(layers=4)
  grads = testing.make_grads(params, 3)
  lr, beta, wd = 2e-3, 0.9, 0.1
  tx = O.scion(lr, beta=beta, hidden_radius=5.0, vector_radius=0.5, weight_decay=wd,
               embedding_lmo=embedding_lmo, head_lmo=head_lmo, constrained=constrained,
               batch_axes=batch_axes)
  sign_radius = lambda lmo: 300.0 if lmo == "sign" else 5.0
  radii = dict(hidden=5.0, vector=0.5, embedding=sign_radius(embedding_lmo),
               head=sign_radius(head_lmo))
  if constrained:
    decayed, wd = (lambda k: True), 1.0
  else:  # labels.weight_decay_mask: hidden matrices and the untied head
    decayed = lambda k: not (k.endswith("embedding") or "scale" in k)
  expected = reference_scion(params, grads, lr, beta, wd, decayed, embedding_lmo, head_lmo,
                             radii)
  testing.assert_trajectory_close(testing.run_trajectory(tx, params, grads), expected,
                                  rtol=2e-5, atol=2e-6)


def test_sharded_matches_unsharded():
  params, batch_axes, specs = transformer_tree()
  tx = O.create("scion", learning_rate=1e-3, hidden_radius=5.0, weight_decay=0.1,
                batch_axes=batch_axes)
  sharding_check.check_sharded_matches_unsharded(tx, params, specs, n_steps=2,
                                                   rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(ns_steps=0), "ns_steps"),
    (dict(ns_coefficients="nope"), "preset"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(beta=1.0), "beta"),
    (dict(hidden_radius=0.0), "hidden_radius"),
    (dict(embedding_lmo="spectral"), "embedding_lmo"),
    (dict(head_lmo="row_norm"), "head_lmo"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.scion(**bad)
