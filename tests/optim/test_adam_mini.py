"""Adam-mini against a NumPy reference with explicit per-block loops; state size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import testing

L, D, H, HKV, HD, V = 2, 8, 4, 2, 3, 10


def model_params(seed=0):
  """A tiny stacked transformer tree with the contract's names (kernels are (in, out))."""
  rng = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {"embed": {"embedding": f32(V, D)},
          "layers": {"attn": {"q_proj": {"kernel": f32(L, D, H * HD)},
                              "k_proj": {"kernel": f32(L, D, HKV * HD)},
                              "o_proj": {"kernel": f32(L, H * HD, D)}},
                     "attn_norm": {"scale": f32(L, D)}},
          "final_norm": {"scale": f32(D)},
          "lm_head": {"kernel": f32(D, V)}}


def batch_axes(path, leaf):
  """Stacked layers carry one leading batch axis (the callable form of ``batch_axes``)."""
  del leaf
  return 1 if path[0].key == "layers" else 0


def block_mean_sq(name, g):
  """mean(g^2) per block, written with explicit loops over blocks."""
  if name == "q_proj" or name == "k_proj":
    heads = H if name == "q_proj" else HKV
    out = np.zeros((L, heads))
    for layer in range(L):
      for h in range(heads):
        out[layer, h] = np.mean(g[layer, :, h * HD:(h + 1) * HD] ** 2)
    return out, lambda v: np.repeat(v[:, None, :], HD, axis=-1).reshape(L, 1, heads * HD)
  if name == "embedding":
    return np.array([np.mean(g[row] ** 2) for row in range(V)]), lambda v: v[:, None]
  if name == "attn_norm":
    return np.array([np.mean(g[layer] ** 2) for layer in range(L)]), lambda v: v[:, None]
  if name == "final_norm":
    return np.mean(g**2), lambda v: v
  if name == "o_proj":
    out = np.array([[np.mean(g[layer, :, col] ** 2) for col in range(D)] for layer in range(L)])
    return out, lambda v: v[:, None, :]
  if name == "lm_head":
    return np.array([np.mean(g[:, col] ** 2) for col in range(V)]), lambda v: v[None, :]
  raise AssertionError(name)


def leaf_name(path):
  keys = [k.key for k in path]
  return keys[-2] if keys[-1] in ("kernel", "scale") else keys[-1]


def reference_adam_mini(params, grads, lr, b1, b2, eps, wd):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(testing.to_numpy(params))
  names = [leaf_name(p) for p, _ in leaves]
  flat = [x for _, x in leaves]
  m = [np.zeros_like(x) for x in flat]
  v = [0.0] * len(flat)
  out = []
  for t, g_tree in enumerate(testing.to_numpy(grads), start=1):
    for i, g in enumerate(jax.tree.leaves(g_tree)):
      mean_sq, broadcast = block_mean_sq(names[i], g)
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * mean_sq
      u = (m[i] / (1 - b1**t)) / (np.sqrt(broadcast(v[i]) / (1 - b2**t)) + eps)
      flat[i] = flat[i] - lr * (u + wd * flat[i])
    out.append(treedef.unflatten(list(flat)))
  return out


def build(**kwargs):
  return O.adam_mini(num_heads=H, num_kv_heads=HKV, batch_axes=batch_axes, **kwargs)


def test_matches_reference():
  params = model_params()
  grads = testing.make_grads(params, 20)
  traj = testing.run_trajectory(build(learning_rate=1e-2, b1=0.8, b2=0.99, weight_decay=0.1),
                                params, grads)
  testing.assert_trajectory_close(
      traj, reference_adam_mini(params, grads, 1e-2, 0.8, 0.99, 1e-8, 0.1))


def test_second_moment_is_one_scalar_per_block():
  params = model_params()
  nu = build(learning_rate=1e-3).init(params)[0].nu
  shapes = jax.tree.map(jnp.shape, nu)
  assert shapes == {"embed": {"embedding": (V,)},
                    "layers": {"attn": {"q_proj": {"kernel": (L, H)},
                                        "k_proj": {"kernel": (L, HKV)},
                                        "o_proj": {"kernel": (L, D)}},
                               "attn_norm": {"scale": (L,)}},
                    "final_norm": {"scale": ()}, "lm_head": {"kernel": (V,)}}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nu))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_v = sum(x.size for x in jax.tree.leaves(nu))
  assert n_v * 10 < n_params  # already 10x smaller on this toy tree


def test_state_is_tiny_at_scale():
  """A 124M-shaped tree (abstract, nothing allocated): v holds ~0.1% of the parameters
  count (127k numbers: 50k token rows, the rest output neurons and heads)."""
  d, layers, vocab, ffn = 768, 12, 50304, 2048
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  params = {"embed": {"embedding": shape(vocab, d)},
            "layers": {"attn": {n: {"kernel": shape(layers, d, d)}
                                for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
                       "mlp": {"gate_proj": {"kernel": shape(layers, d, ffn)},
                               "up_proj": {"kernel": shape(layers, d, ffn)},
                               "down_proj": {"kernel": shape(layers, ffn, d)}},
                       "attn_norm": {"scale": shape(layers, d)},
                       "mlp_norm": {"scale": shape(layers, d)}},
            "final_norm": {"scale": shape(d)}}
  state = jax.eval_shape(O.adam_mini(1e-3, num_heads=12, batch_axes=batch_axes).init, params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_v = sum(x.size for x in jax.tree.leaves(state[0].nu))
  assert n_v < 1.1e-3 * n_params, (n_v, n_params)


def test_query_projection_needs_num_heads():
  with pytest.raises(ValueError, match="num_heads"):
    O.adam_mini(1e-3, batch_axes=batch_axes).init(model_params())
  with pytest.raises(ValueError, match="divisible"):
    O.adam_mini(1e-3, num_heads=5, batch_axes=batch_axes).init(model_params())


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=1e-3, b1=1.0), "b1"),
    (dict(learning_rate=1e-3, b2=2.0), "b2"),
    (dict(learning_rate=1e-3, eps=0.0), "eps"),
    (dict(learning_rate=1e-3, weight_decay=-0.1), "weight_decay"),
    (dict(learning_rate=1e-3, num_heads=0), "num_heads"),
    (dict(learning_rate=1e-3, num_kv_heads=2.5), "num_kv_heads"),
])
def test_bad_hyperparameters(bad, match):
  with pytest.raises(ValueError, match=match):
    O.adam_mini(**bad)
