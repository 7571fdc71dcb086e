"""Parametrizations: standard is today's model bit for bit; mup / completep multipliers, init
stds and width ratios; config errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import config as config_lib
from optbench_jax import models
from optbench_jax.models import parametrization as P
from tests.models import standard_reference

TINY = dict(num_layers=2, d_model=64, num_heads=4, ffn_dim=128, vocab_size=128)


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_standard_is_the_recorded_model_bit_for_bit(name):
  """Same parameter tree and values, same first logits, same 5-step loss curve as recorded
  before parametrizations existed (tests/models/standard_reference.py)."""
  config = standard_reference.micro_configs()[name]
  assert config.model.parametrization == "standard"
  with np.load(standard_reference.PATH) as stored:
    expected = {k: stored[k] for k in stored if k.startswith(f"{name}/")}
  got = standard_reference.compute(name, config)
  assert sorted(got) == sorted(expected)   # the parameter tree: a checkpoint still restores
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_standard_multipliers_are_one():
  m = P.multipliers(models.ModelSpec.from_config(TINY))
  assert (m.embedding, m.output, m.query, m.residual_branch) == (1.0, 1.0, 1.0, 1.0)
  assert m.hidden_std == 0.02 and m.residual_std == 0.02 / math.sqrt(4)


def test_mup_and_completep_multipliers():
  spec = models.ModelSpec.from_config(dict(TINY, d_model=256, num_heads=4, ffn_dim=512,
                                           num_layers=8, parametrization="mup", base_width=64,
                                           base_depth=2, mup_embedding_multiplier=10.0,
                                           mup_output_multiplier=2.0))
  m = P.multipliers(spec)   # m_w = 4, hd = 64
  assert m.hidden_std == pytest.approx(0.02 / 2)
  assert m.residual_std == pytest.approx(0.02 / 2 / math.sqrt(16))
  assert (m.embedding, m.output, m.query, m.residual_branch) == (10.0, 0.5, 1 / 8, 1.0)
  c = P.multipliers(models.ModelSpec.from_config(dict(spec.__dict__, parametrization="completep")))
  assert c.residual_branch == 2 / 8 and c.residual_std == pytest.approx(0.02 / 2 / math.sqrt(4))
  assert (c.embedding, c.output, c.query, c.hidden_std) == (10.0, 0.5, 1 / 8, m.hidden_std)


def test_completep_equals_mup_at_the_base_depth():
  base = dict(TINY, parametrization="mup", base_depth=2)
  params = models.init_params(base, jax.random.key(0))
  tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
  mup = models.build_model(base).apply({"params": params}, tokens)[0]
  completep = models.build_model(dict(base, parametrization="completep")).apply(
      {"params": params}, tokens)[0]
  np.testing.assert_array_equal(mup, completep)


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_mup_init_stds_scale_with_one_over_sqrt_width(kind):
  extra = dict(kind="moe", num_experts=4) if kind == "moe" else {}
  spec = dict(TINY, d_model=256, ffn_dim=512, parametrization="mup", base_width=64, **extra)
  params = models.init_params(spec, jax.random.key(0))
  std = lambda x: float(np.std(np.asarray(x)))
  assert std(params["embed"]["embedding"]) == pytest.approx(0.02, rel=0.05)
  assert std(params["layers"]["attn"]["q_proj"]["kernel"]) == pytest.approx(0.01, rel=0.05)
  assert std(params["layers"]["attn"]["o_proj"]["kernel"]) == pytest.approx(0.005, rel=0.05)
  mlp = params["layers"]["moe"]["experts"] if kind == "moe" else params["layers"]["mlp"]
  assert std(mlp["up_proj"]["kernel"]) == pytest.approx(0.01, rel=0.05)
  assert std(mlp["down_proj"]["kernel"]) == pytest.approx(0.005, rel=0.05)


def test_mup_forward_multiplies_embedding_query_and_logits():
  """The mup model equals the standard one on rescaled weights: the query multiplier
  1/sqrt(hd) folded into q_proj; the embedding multiplier a undone by dividing both branch
  outputs by a (x_mup = a x_std, and RMSNorm is scale-invariant with eps ~ 0); the logits
  times alpha_out base_width / d_model."""
  a, alpha_out, base_width = 3.0, 0.5, 32
  cfg = dict(TINY, num_layers=1, parametrization="mup", base_width=base_width, norm_eps=1e-12,
             mup_embedding_multiplier=a, mup_output_multiplier=alpha_out, attention_impl="xla")
  spec = models.ModelSpec.from_config(cfg)
  params = models.init_params(spec, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 128)
  got = models.build_model(spec).apply({"params": params}, tokens)[0]
  layer = jax.tree.map(lambda x: x, params["layers"])
  layer["attn"]["q_proj"]["kernel"] /= math.sqrt(spec.head_dim)
  layer["attn"]["o_proj"]["kernel"] /= a
  layer["mlp"]["down_proj"]["kernel"] /= a
  standard = dict(cfg, parametrization="standard")
  want = models.build_model(standard).apply({"params": {**params, "layers": layer}}, tokens)[0]
  np.testing.assert_allclose(got, want * alpha_out * base_width / spec.d_model, rtol=1e-4,
                             atol=1e-6)


def test_width_scaling_roles_and_ratios():
  spec = dict(TINY, d_model=256, ffn_dim=512, tie_embeddings=False, base_width=64)
  scaling = P.width_scaling(spec)
  shapes = models.abstract_params(spec)
  assert jax.tree.structure(P.roles(spec)) == jax.tree.structure(shapes)
  s = lambda *keys: __import__("functools").reduce(lambda n, k: n[k], keys, scaling)
  assert s("embed", "embedding") == P.WidthScaling("embedding", 1.0, 0.25)
  assert s("lm_head", "kernel") == P.WidthScaling("output", 0.25, 1.0)
  assert s("layers", "attn", "q_proj", "kernel") == P.WidthScaling("hidden", 0.25, 0.25)
  assert s("layers", "mlp", "down_proj", "kernel") == P.WidthScaling("hidden", 0.25, 0.25)
  assert s("layers", "attn_norm", "scale").role == "vector"
  assert s("final_norm", "scale").role == "vector"
  ratios = P.width_ratios(spec)
  assert ratios["layers"]["attn"]["o_proj"]["kernel"] == 0.25
  assert ratios["embed"]["embedding"] == 1.0
  moe = P.width_scaling(dict(spec, kind="moe", num_experts=4))
  assert moe["layers"]["moe"]["experts"]["gate_proj"]["kernel"] == P.WidthScaling(
      "hidden", 0.25, 0.25)
  assert moe["layers"]["moe"]["router"]["kernel"] == P.WidthScaling("hidden", 0.25, 1.0)


@pytest.mark.parametrize("key,value,message", [
    ("parametrization", "mupp", "model.parametrization='mupp': must be one of"),
    ("base_width", 0, "model.base_width=0: must be an integer >= 1"),
    ("base_depth", -2, "model.base_depth=-2: must be an integer >= 1"),
    ("mup_embedding_multiplier", 0.0, "model.mup_embedding_multiplier=0.0: must be a number > 0"),
    ("mup_output_multiplier", -1.0, "model.mup_output_multiplier=-1.0: must be a number > 0"),
])
def test_bad_parametrization_settings_are_one_config_error(key, value, message):
  with pytest.raises(config_lib.ConfigError, match="config." + message.replace("(", r"\(")):
    config_lib.resolve(dict(model={key: value}))


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_report_activations_sows_every_kind_with_the_same_logits(kind):
  """On, the probe gives the same logits up to rounding (the scan carries the sown values;
  MoE differed by 5e-7); off is the bit-identical model (the standard reference test)."""
  from optbench_jax.models import llama   # pylint: disable=import-outside-toplevel
  extra = dict(kind="moe", num_experts=4) if kind == "moe" else {}
  cfg = dict(TINY, parametrization="completep", **extra)
  params = models.init_params(cfg, jax.random.key(0))
  tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
  plain = models.build_model(cfg).apply({"params": params}, tokens)[0]
  logits, sown = models.build_model(cfg, report_activations=True).apply(
      {"params": params}, tokens, mutable=[llama.ACTIVATIONS])
  np.testing.assert_allclose(logits[0], plain, rtol=1e-5, atol=1e-6)
  acts = sown[llama.ACTIVATIONS]
  assert acts["embedding"][0].shape == acts["residual_stream"][0].shape == (2, 8, 64)
  np.testing.assert_array_equal(acts["logits"][0], logits[0])
  assert acts["layers"]["attention_output"][0].shape == (2, 2, 8, 64)   # [L, B, S, d]
  assert acts["layers"]["mlp_output"][0].shape[0] == 2
