"""Dense Llama: sizes of every preset, an independent reference forward, causality, init, scan."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import models as M
from optbench_jax.models import llama as L
from optbench_jax.optim import labels

TINY = dict(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, ffn_dim=64, vocab_size=128)

# Published sizes (REFERENCE section 1). Semenov et al. count all parameters with
# tied embeddings (embedding included): our counts agree to 0.1%. MoE-520M:
# total 520.0M / active 180.3M. Wen et al.'s names are non-embedding counts of
# the stated d / ffn / 32 layers, rounded: 134.3M, 302.0M, 536.9M, 1.208B, so
# 130M and 520M are 3.3% off their names -> 5% tolerance for that study.
PUBLISHED = [
    ("124m", "total", 123.6e6, 0.005),
    ("210m", "total", 208.5e6, 0.005),
    ("720m", "total", 720e6, 0.01),
    ("moe_520m", "total", 520e6, 0.01),
    ("moe_520m", "active", 180e6, 0.01),
    ("130m", "non_embedding", 130e6, 0.05),
    ("300m", "non_embedding", 300e6, 0.05),
    ("520m", "non_embedding", 520e6, 0.05),
    ("1_2b", "non_embedding", 1.2e9, 0.05),
]


@pytest.mark.parametrize("name,kind,size,rtol", PUBLISHED)
def test_param_count_matches_published_size(name, kind, size, rtol):
  cfg = importlib.import_module(f"configs.{name}").get_config()
  counts = M.count_params(cfg.model)
  assert abs(counts[kind] - size) / size < rtol, counts


def test_param_count_exact_for_124m():
  # 12 * (4 d^2 + 3 d f + 2 d) + V d + d with d=768, f=2048, V=50304.
  d, f, v, n_layer = 768, 2048, 50304, 12
  expected = n_layer * (4 * d * d + 3 * d * f + 2 * d) + v * d + d
  counts = M.count_params(importlib.import_module("configs.124m").get_config().model)
  assert counts == dict(total=expected, non_embedding=expected - v * d, embedding=v * d,
                        active=expected)


def test_ffn_rule():
  assert M.ModelSpec.from_config(dict(d_model=768)).ffn_dim == 2048
  assert M.ModelSpec.from_config(dict(d_model=2048, num_heads=16)).ffn_dim == 5632
  assert M.ModelSpec.from_config(dict(d_model=768, ffn_dim=3072)).ffn_dim == 3072


def _rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x, pos, theta):  # x [S, N, hd]; pairs (i, i + hd/2) as complex numbers
  hd = x.shape[-1]
  w = theta ** (-np.arange(0, hd, 2) / hd)
  z = (x[..., :hd // 2] + 1j * x[..., hd // 2:]) * np.exp(1j * pos[:, None, None] * w)
  return np.concatenate([z.real, z.imag], -1)


def reference_forward(p, tokens, cfg, return_max_logits=False):
  """Float64 NumPy Llama written from the equations, one sequence at a time.

  ``return_max_logits``: also the largest causal pre-softmax logit per layer
  and head over the batch, [L, H].
  """
  spec = M.ModelSpec.from_config(cfg)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  h, hkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
  out, max_logits = [], np.full((spec.num_layers, h), -np.inf)
  for seq in np.asarray(tokens):
    s = len(seq)
    x = p["embed"]["embedding"][seq]
    for layer in range(spec.num_layers):
      lp = jax.tree.map(lambda a: a[layer], p["layers"])
      a = _rms(x, lp["attn_norm"]["scale"], spec.norm_eps)
      q = (a @ lp["attn"]["q_proj"]["kernel"]).reshape(s, h, hd)
      k = (a @ lp["attn"]["k_proj"]["kernel"]).reshape(s, hkv, hd)
      v = (a @ lp["attn"]["v_proj"]["kernel"]).reshape(s, hkv, hd)
      q, k = _rope(q, np.arange(s), spec.rope_theta), _rope(k, np.arange(s), spec.rope_theta)
      k, v = np.repeat(k, h // hkv, axis=1), np.repeat(v, h // hkv, axis=1)
      scores = np.einsum("qnd,knd->nqk", q, k) / math.sqrt(hd)
      scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
      max_logits[layer] = np.maximum(max_logits[layer], scores.max(axis=(1, 2)))
      att = np.exp(scores - scores.max(-1, keepdims=True))
      att /= att.sum(-1, keepdims=True)
      o = np.einsum("nqk,knd->qnd", att, v).reshape(s, h * hd)
      x = x + o @ lp["attn"]["o_proj"]["kernel"]
      m = _rms(x, lp["mlp_norm"]["scale"], spec.norm_eps)
      g, u = m @ lp["mlp"]["gate_proj"]["kernel"], m @ lp["mlp"]["up_proj"]["kernel"]
      x = x + (g / (1 + np.exp(-g)) * u) @ lp["mlp"]["down_proj"]["kernel"]
    x = _rms(x, p["final_norm"]["scale"], spec.norm_eps)
    head = p["embed"]["embedding"].T if spec.tie_embeddings else p["lm_head"]["kernel"]
    out.append(x @ head)
  return (np.stack(out), max_logits) if return_max_logits else np.stack(out)


def _perturbed_params(cfg, seed=0):
  # Norm scales are ones at init; perturb them so the reference checks their use.
  params = M.init_params(cfg, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 * jax.random.normal(next(keys), x.shape)
      if "scale" in str(path) else x, params)


@pytest.mark.parametrize("tie", [True, False])
def test_forward_matches_numpy_reference(tie):
  cfg = dict(TINY, tie_embeddings=tie)
  params = _perturbed_params(cfg)
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg["vocab_size"])
  logits, aux = jax.jit(M.build_model(cfg).apply)({"params": params}, tokens)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 12, 128)
  np.testing.assert_allclose(logits, reference_forward(params, tokens, cfg), rtol=1e-4, atol=1e-4)
  assert float(aux["moe_aux_loss"]) == 0.0 and float(aux["router_z_loss"]) == 0.0
  assert ("lm_head" in params) != tie


@pytest.mark.parametrize("num_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_reported_attention_max_logits_match_numpy(num_kv_heads):
  """aux['attn_max_logits'] [L, H] = max over batch and causal (i, j) of q_i . k_j / sqrt(hd)."""
  cfg = dict(TINY, num_kv_heads=num_kv_heads)
  params = _perturbed_params(cfg)
  # Larger q/k weights: logits of order 1-10 with distinct per-head maxima.
  params["layers"]["attn"] = {
      name: ({"kernel": 20 * w["kernel"]} if name in ("q_proj", "k_proj") else w)
      for name, w in params["layers"]["attn"].items()}
  tokens = jax.random.randint(jax.random.key(3), (3, 10), 0, cfg["vocab_size"])
  model = M.build_model(cfg, report_max_logits=True)
  logits, aux = jax.jit(model.apply)({"params": params}, tokens)
  want_logits, want = reference_forward(params, tokens, cfg, return_max_logits=True)
  assert aux["attn_max_logits"].shape == (2, 4) and aux["attn_max_logits"].dtype == jnp.float32
  assert np.ptp(want) > 1.0, want                    # the heads really differ
  np.testing.assert_allclose(aux["attn_max_logits"], want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
  plain_logits, plain_aux = jax.jit(M.build_model(cfg).apply)({"params": params}, tokens)
  assert "attn_max_logits" not in plain_aux          # off by default
  np.testing.assert_allclose(plain_logits, logits, rtol=1e-6, atol=1e-6)
  # No gradient flows through the report.
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, tokens)[1]["attn_max_logits"]))(
      params)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_moe_and_remat_report_attention_max_logits():
  cfg = dict(TINY, kind="moe", num_experts=4, experts_top_k=2, remat="full")
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, cfg["vocab_size"])
  _, aux = M.build_model(cfg, report_max_logits=True).apply({"params": params}, tokens)
  dense = {k: v for k, v in cfg.items() if k not in ("kind", "num_experts", "experts_top_k")}
  dense_params = {k: v for k, v in params.items()}
  dense_params["layers"] = {k: v for k, v in params["layers"].items() if k != "moe"}
  dense_params["layers"]["mlp"] = M.init_params(dense, jax.random.key(0))["layers"]["mlp"]
  _, want = reference_forward(dense_params, tokens, dense, return_max_logits=True)
  # Layer 0's attention input does not depend on the MLP / MoE: same logits.
  np.testing.assert_allclose(aux["attn_max_logits"][0], want[0], rtol=1e-4, atol=1e-5)
  assert aux["attn_max_logits"].shape == (2, 4) and "moe_max_load" in aux


def test_causal():
  params = M.init_params(TINY, jax.random.key(0))
  apply = jax.jit(M.build_model(TINY).apply)
  tokens = jax.random.randint(jax.random.key(1), (1, 16), 0, 128)
  changed = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % 128)
  a, _ = apply({"params": params}, tokens)
  b, _ = apply({"params": params}, changed)
  np.testing.assert_array_equal(a[:, :9], b[:, :9])
  assert np.abs(a[:, 9:] - b[:, 9:]).max() > 1e-3


def test_init_std():
  cfg = dict(num_layers=4, d_model=128, num_heads=4, ffn_dim=512, vocab_size=512,
             tie_embeddings=False)
  p = M.init_params(cfg, jax.random.key(0))
  resid = 0.02 / math.sqrt(2 * 4)
  expected = {("embed", "embedding"): 0.02, ("lm_head", "kernel"): 0.02,
              ("attn", "q_proj"): 0.02, ("attn", "k_proj"): 0.02, ("attn", "v_proj"): 0.02,
              ("attn", "o_proj"): resid, ("mlp", "gate_proj"): 0.02, ("mlp", "up_proj"): 0.02,
              ("mlp", "down_proj"): resid}
  flat = {labels.path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]}
  for names, leaf in flat.items():
    if "scale" in names:
      np.testing.assert_array_equal(leaf, 1.0)
      continue
    std = next(v for k, v in expected.items() if all(n in names for n in k))
    assert abs(float(jnp.std(leaf)) / std - 1) < 0.05, (names, float(jnp.std(leaf)), std)
    assert abs(float(jnp.mean(leaf))) < 0.1 * std
  # Layers are initialised independently (split rngs in the scan).
  q = p["layers"]["attn"]["q_proj"]["kernel"]
  assert not np.allclose(q[0], q[1])


def test_param_tree_contract_and_batch_axes():
  p = M.abstract_params(dict(TINY, tie_embeddings=False))
  assert p["layers"]["attn"]["q_proj"]["kernel"].shape == (2, 32, 32)
  assert p["layers"]["attn"]["k_proj"]["kernel"].shape == (2, 32, 16)
  assert p["layers"]["mlp"]["down_proj"]["kernel"].shape == (2, 64, 32)
  assert p["lm_head"]["kernel"].shape == (32, 128)
  axes = M.param_batch_axes(p)
  assert axes["layers"]["attn_norm"]["scale"] == 1 and axes["embed"]["embedding"] == 0
  got = labels.label_params(p, batch_axes=axes)
  assert got["layers"]["attn"]["o_proj"]["kernel"] == labels.MATRIX
  assert got["layers"]["mlp_norm"]["scale"] == labels.VECTOR
  assert got["embed"]["embedding"] == labels.EMBEDDING
  assert got["lm_head"]["kernel"] == labels.HEAD
  specs = M.logical_axes(TINY)
  assert tuple(specs["layers"]["mlp"]["gate_proj"]["kernel"]) == ("layers", "embed", "mlp")


def test_remat_same_loss_and_grads():
  params = M.init_params(TINY, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 128)

  def loss(cfg):
    model = M.build_model(cfg)
    return jax.jit(jax.value_and_grad(
        lambda p: M.losses.lm_loss(model.apply({"params": p}, tokens)[0], tokens)[0]))(params)

  l0, g0 = loss(TINY)
  for remat in ("full", "dots"):
    l1, g1 = loss(dict(TINY, remat=remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g0, g1)


def _hlo_ops(cfg):
  model = M.build_model(cfg)
  params = M.abstract_params(cfg)
  tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
  text = jax.jit(model.apply).lower({"params": params}, tokens).as_text()
  return sum(1 for line in text.splitlines() if " = " in line)


def test_scan_hlo_size_independent_of_depth():
  scanned = dict(TINY, scan_layers=True)
  two, eight = _hlo_ops(dict(scanned, num_layers=2)), _hlo_ops(dict(scanned, num_layers=8))
  assert eight == two, (two, eight)  # the scan body is emitted once
  # scan_layers=False unrolls: the program grows with depth (the layer body is
  # an outlined function called once per layer, hence not 4x).
  unrolled = _hlo_ops(dict(TINY, num_layers=8, scan_layers=False))
  assert unrolled > 1.3 * two, (two, unrolled)
  # None (the default) is unrolled on CPU, where these tests run.
  assert _hlo_ops(dict(TINY, num_layers=8)) == unrolled


def test_scans_layers_auto_by_platform():
  assert [L.scans_layers(None, p) for p in ("cpu", "gpu", "tpu")] == [False, True, True]
  assert L.scans_layers(True, "cpu") and not L.scans_layers(False, "tpu")


def test_scan_and_unrolled_compute_the_same_function():
  cfg = dict(TINY, num_layers=3)
  params = M.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, TINY["vocab_size"])

  def loss_and_grads(scan):
    model = M.build_model(dict(cfg, scan_layers=scan))
    loss = lambda p: jnp.mean(model.apply({"params": p}, tokens)[0] ** 2)
    return jax.value_and_grad(loss)(params)

  (l0, g0), (l1, g1) = loss_and_grads(True), loss_and_grads(False)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), g0, g1)


@pytest.mark.parametrize("bad,match", [
    (dict(kind="gpt"), "model.kind"),
    (dict(num_heads=5), "model.num_heads"),
    (dict(num_kv_heads=3), "model.num_kv_heads"),
    (dict(remat="some"), "model.remat"),
    (dict(scan_layers="yes"), "model.scan_layers"),
    (dict(num_experts=4), "model.num_experts"),
    (dict(kind="moe", num_experts=4, experts_top_k=5), "model.experts_top_k"),
    (dict(d_modle=4), "unknown model config key"),
])
def test_bad_config_raises_one_clear_error(bad, match):
  with pytest.raises(ValueError, match=match):
    M.build_model(dict(TINY, **bad))


def test_bfloat16_compute_float32_params_and_logits():
  cfg = dict(TINY, compute_dtype="bfloat16")
  params = M.init_params(cfg, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 128)
  low, _ = jax.jit(M.build_model(cfg).apply)({"params": params}, tokens)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, reference_forward(params, tokens, TINY), atol=0.05)


def _batched_3d_loss(p, tokens, spec):
  """The model before the CPU-throughput rewrite, in jnp: every projection an einsum over [B, S, d].

  The model now runs its dense blocks on tokens [B*S, d] (``layers.token_axes``);
  loss and gradients must not change.
  """
  from optbench_jax.models import attention  # pylint: disable=import-outside-toplevel
  rms = lambda x, w: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + spec.norm_eps) * w
  b, s = tokens.shape
  h, hkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
  x = p["embed"]["embedding"][tokens]
  for i in range(spec.num_layers):
    lp = jax.tree.map(lambda a: a[i], p["layers"])
    kern = lambda name: lp["attn"][name]["kernel"]
    a = rms(x, lp["attn_norm"]["scale"])
    q = jnp.einsum("bsd,df->bsf", a, kern("q_proj")).reshape(b, s, h, hd)
    k = jnp.einsum("bsd,df->bsf", a, kern("k_proj")).reshape(b, s, hkv, hd)
    v = jnp.einsum("bsd,df->bsf", a, kern("v_proj")).reshape(b, s, hkv, hd)
    pos = jnp.arange(s)
    q, k = attention.apply_rope(q, pos, spec.rope_theta), attention.apply_rope(k, pos,
                                                                                spec.rope_theta)
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, s, h * hd)
    x = x + jnp.einsum("bsf,fd->bsd", o, kern("o_proj"))
    m = rms(x, lp["mlp_norm"]["scale"])
    mlp = lambda name: jnp.einsum("bsd,df->bsf", m, lp["mlp"][name]["kernel"])
    x = x + jnp.einsum("bsf,fd->bsd", jax.nn.silu(mlp("gate_proj")) * mlp("up_proj"),
                       lp["mlp"]["down_proj"]["kernel"])
  logits = jnp.einsum("bsd,vd->bsv", rms(x, p["final_norm"]["scale"]), p["embed"]["embedding"])
  return M.losses.lm_loss(logits, tokens)[0]


def test_token_layout_same_loss_and_grads_as_batched_3d_expression():
  # Tolerance: float32, different summation order only -> rtol 1e-5 on the loss, 2e-4 on
  # gradients (atol 1e-7 for near-zero entries).
  cfg = dict(TINY, num_kv_heads=4)
  spec = M.ModelSpec.from_config(cfg)
  params = _perturbed_params(cfg)
  tokens = jax.random.randint(jax.random.key(3), (3, 16), 0, 128)
  model = M.build_model(cfg)
  ours = jax.jit(jax.value_and_grad(
      lambda p: M.losses.lm_loss(model.apply({"params": p}, tokens)[0], tokens)[0]))(params)
  ref = jax.jit(jax.value_and_grad(lambda p: _batched_3d_loss(p, tokens, spec)))(params)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7), ours[1],
               ref[1])
