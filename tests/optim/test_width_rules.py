"""Per-optimizer learning-rate and weight-decay scaling rules across width and depth.

The expected multipliers are written here from the rules' equations (µP's Adam rule, the
spectral condition with each optimizer's own shape scale, Moonlight's RMS matching, CompleteP's
depth exponent), independently of ``width_rules``; the trainer's optimizer is checked to apply
them to real steps, with independent weight decay, and to refuse bad settings in one line.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import models
from optbench_jax.config import ConfigError
from optbench_jax.models import parametrization as P
from optbench_jax.optim import registry
from optbench_jax.optim import width_rules as W
from optbench_jax.train import optimizer as optimizer_lib
from tests.train import tiny

BASE = 32

# Expected hidden-matrix rate multiplier at width d (base 32, ffn = 4d, fixed heads), per
# (fan_in, fan_out) at the base: the equation of each family's rule, relative to the base.
ADAM_RULE = lambda m, fi, fo: 1.0 / m                          # base_fan_in / fan_in
SPECTRAL_FIXED_ASPECT = lambda m, fi, fo: 1.0                  # sqrt(fo/fi) / s(fi, fo): aspect-free
# A step scaled to RMS 0.2 (spectral norm 0.2 sqrt(max side)) grows as sqrt(m): 1/sqrt(m).
SPECTRAL_RMS_ALIGNED = lambda m, fi, fo: 1.0 / math.sqrt(m)
RMS_MATCHED = lambda m, fi, fo: math.sqrt(m) / m               # 0.2 sqrt(max) grows sqrt(m); x 1/m

EXPECTED = {
    "adamw": ADAM_RULE, "nadamw": ADAM_RULE, "adopt": ADAM_RULE, "ademamix": ADAM_RULE,
    "lion": ADAM_RULE, "signum": ADAM_RULE, "mars": ADAM_RULE, "c_adamw": ADAM_RULE,
    "c_lion": ADAM_RULE, "adam_mini": ADAM_RULE, "sophia": ADAM_RULE, "soap": ADAM_RULE,
    "conda": ADAM_RULE,
    "muon": SPECTRAL_FIXED_ASPECT, "d_muon": SPECTRAL_RMS_ALIGNED,
    "normuon": SPECTRAL_FIXED_ASPECT, "adamuon": SPECTRAL_RMS_ALIGNED,
    "dion": SPECTRAL_FIXED_ASPECT, "kron": SPECTRAL_FIXED_ASPECT,
    "scion": SPECTRAL_FIXED_ASPECT, "splus": SPECTRAL_FIXED_ASPECT,
    "adamh": SPECTRAL_FIXED_ASPECT, "muonh": SPECTRAL_FIXED_ASPECT,
}
WITHOUT_RULES = {"prodigy", "schedule_free_adamw"}


def model_config(d_model, parametrization="mup", **extra):
  c = tiny.micro_config("/unused", steps=4).model
  c.update(dict(dict(num_layers=2, d_model=d_model, num_heads=2, ffn_dim=4 * d_model,
                     base_width=BASE, base_depth=2, parametrization=parametrization), **extra))
  return c


def hidden_multipliers(name, d_model, option="auto", hparams=None, **model):
  rules = W.rules_of(registry.factory(name))
  option = W.resolve_option(name, rules, option, "mup")
  geometry = P.geometry(model_config(d_model, **model))
  factors = W.multipliers(rules, option, geometry, hparams or {})
  out = {}
  for (path, g), c in zip(jax.tree_util.tree_leaves_with_path(geometry, is_leaf=W._is_geometry),
                          jax.tree.leaves(factors)):
    out[jax.tree_util.keystr(path)] = (g, c)
  return out


def test_every_builtin_declares_a_rule_or_is_known_not_to():
  declared = {n for n in registry.builtin_names() if W.rules_of(registry.factory(n))}
  assert declared == set(EXPECTED)
  assert set(registry.builtin_names()) - declared == WITHOUT_RULES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_rule_gives_the_ratio_its_equation_says_at_two_widths(name):
  """At 2x and 8x the base width every hidden matrix's multiplier is the rule's, the
  embedding's and vectors' stay 1, and at the base width everything is 1."""
  at_base = hidden_multipliers(name, BASE)
  assert all(c == 1.0 for _, c in at_base.values()), at_base
  for m in (2, 8):
    for key, (g, c) in hidden_multipliers(name, BASE * m).items():
      if g.role == W.HIDDEN:
        assert c == pytest.approx(EXPECTED[name](m, g.base_fan_in, g.base_fan_out)), (key, m)
      else:
        assert c == 1.0, (key, g.role, c)


def test_rms_matching_is_adams_rule_on_a_step_that_grows_as_sqrt_width():
  """Muon: 0.2 sqrt(max) / Muon's scale grows as sqrt(m), times Adam's 1/m. D-Muon's step is
  already RMS-matched: Adam's 1/m alone. NorMuon follows its ``rescale``."""
  for m in (2, 8):
    cases = [("muon", {}, RMS_MATCHED), ("d_muon", {}, ADAM_RULE),
             ("normuon", {}, RMS_MATCHED), ("normuon", {"rescale": "rms"}, ADAM_RULE)]
    for name, hparams, rule in cases:
      for key, (g, c) in hidden_multipliers(name, BASE * m, "rms_match", hparams).items():
        if g.role == W.HIDDEN:
          assert c == pytest.approx(rule(m, g.base_fan_in, g.base_fan_out)), (name, key)


def test_spectral_rule_follows_each_matrix_aspect_ratio():
  """Geometry alone: a matrix whose fan_out stays fixed while fan_in grows 4x (a readout-like
  matrix) takes sqrt(1/4) / Muon's scale ratio under the spectral rule, 1/4 under Adam's."""
  g = W.Geometry(W.HIDDEN, fan_in=256, fan_out=64, base_fan_in=64, base_fan_out=64)
  muon = W.rules_of(registry.factory("muon"))
  # s = sqrt(max(1, fo/fi)) is 1 at both shapes: c = sqrt(64/256) / sqrt(64/64).
  assert muon.multiplier("spectral", g, {}) == pytest.approx(0.5)
  assert W.ELEMENTWISE.multiplier("mup", g, {}) == pytest.approx(0.25)
  # D-Muon's own scale 0.2 sqrt(max(fi, fo)) doubles: c = 0.5 / 2.
  d_muon = W.rules_of(registry.factory("d_muon"))
  assert d_muon.multiplier("spectral", g, {}) == pytest.approx(0.25)


def test_kron_is_whitening_with_triangular_factors_and_elementwise_beyond():
  g = W.Geometry(W.HIDDEN, fan_in=128, fan_out=128, base_fan_in=32, base_fan_out=32)
  kron = W.rules_of(registry.factory("kron"))
  assert kron.multiplier("mup", g, {"max_size_triangular": 8192}) == pytest.approx(1.0)
  assert kron.multiplier("mup", g, {"max_size_triangular": 16}) == pytest.approx(0.25)


def test_depth_rule_is_m_l_to_the_alpha_minus_one_in_the_blocks():
  """CompleteP (alpha = 1): no change with depth; an alpha of 1/2 would take m_L^-1/2. The
  embedding and blocks outside take none."""
  for L in (2, 8):
    for key, (g, c) in hidden_multipliers("adamw", BASE, parametrization="completep",
                                          num_layers=L).items():
      assert g.depth_multiplier == L / 2 and g.depth_alpha == 1.0
      assert c == 1.0, key
  g = W.Geometry(W.VECTOR, 32, 32, 32, 32, depth_multiplier=4.0, depth_alpha=0.5, in_block=True)
  assert W.ELEMENTWISE.multiplier("mup", g, {}) == pytest.approx(0.5)
  outside = W.Geometry(W.VECTOR, 32, 32, 32, 32, depth_multiplier=4.0, depth_alpha=0.5)
  assert W.ELEMENTWISE.multiplier("mup", outside, {}) == 1.0


# ----- the trainer's optimizer applies them ---------------------------------------------------

def build(name, d_model, parametrization="mup", lr=1e-2, wd=0.0, **optimizer):
  c = tiny.micro_config("/unused", steps=4)
  c.model = model_config(d_model, parametrization)
  c.optimizer.update(dict(dict(name=name, learning_rate=lr, weight_decay=wd, grad_clip=0.0),
                          **optimizer))
  c.optimizer.schedule.update(name="constant", warmup_steps=0)
  c.optimizer.hparams = {}
  spec = models.ModelSpec.from_config(c.model)
  params = models.abstract_params(spec)
  return c, spec, optimizer_lib.build(c, params, models.param_batch_axes(params), spec)


def one_step(tx, params, grads):
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  return updates


def real_params(spec, seed=0):
  return models.init_params(spec, jax.random.PRNGKey(seed))


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_the_trainers_step_is_the_unscaled_step_times_the_multiplier(name):
  """One real step at 4x the base width with lr_scaling auto vs none: each leaf's step is the
  unscaled one times the rule's multiplier (Adam: 1/4 on hidden matrices; Muon: 1)."""
  _, spec, scaled = build(name, 4 * BASE)
  _, _, plain = build(name, 4 * BASE, lr_scaling="none")
  params = real_params(spec)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype),
                       params)
  geometry = P.geometry(spec)
  expected = 0.25 if name == "adamw" else 1.0
  for u, v, g in zip(jax.tree.leaves(one_step(scaled.tx, params, grads)),
                     jax.tree.leaves(one_step(plain.tx, params, grads)),
                     jax.tree.leaves(geometry, is_leaf=W._is_geometry)):
    factor = expected if g.role == W.HIDDEN else 1.0
    np.testing.assert_allclose(np.asarray(u), factor * np.asarray(v), rtol=1e-5, atol=1e-9)


def test_independent_decay_shrinks_by_lr_times_wd_over_width_whatever_the_multiplier():
  """Zero gradients (no step from Muon or Adam): independent decay shrinks each decayed
  matrix by lr * wd / m_w (m_w = 4), the same for Muon (multiplier 1) and AdamW (1/4);
  decoupled shrinks by c * lr * wd."""
  lr, wd, m_w = 1e-2, 0.1, 4
  for name, c in (("muon", 1.0), ("adamw", 0.25)):
    _, spec, independent = build(name, m_w * BASE, lr=lr, wd=wd,
                                 weight_decay_scaling="independent")
    _, _, decoupled = build(name, m_w * BASE, lr=lr, wd=wd)
    params = real_params(spec)
    zeros = jax.tree.map(jnp.zeros_like, params)
    geometry = jax.tree.leaves(P.geometry(spec), is_leaf=W._is_geometry)
    for u, v, p, g in zip(jax.tree.leaves(one_step(independent.tx, params, zeros)),
                          jax.tree.leaves(one_step(decoupled.tx, params, zeros)),
                          jax.tree.leaves(params), geometry):
      if g.role != W.HIDDEN:
        continue
      np.testing.assert_allclose(np.asarray(u), -lr * wd / m_w * np.asarray(p), rtol=1e-5)
      np.testing.assert_allclose(np.asarray(v), -c * lr * wd * np.asarray(p), rtol=1e-5)


def test_standard_applies_no_rule():
  for name in ("adamw", "muon", "prodigy"):
    _, _, built = build(name, 4 * BASE, parametrization="standard")
    assert built.width_rule is None


@pytest.mark.parametrize("settings,message", [
    (dict(name="adamw", lr_scaling="spectral"),
     "lr_scaling='spectral' is not a rule of optimizer 'adamw' (elementwise); its rules: "
     "auto, none, mup"),
    (dict(name="adamw", lr_scaling="mu_p"), "lr_scaling='mu_p' is not a rule of optimizer"),
    (dict(name="prodigy"), "optimizer 'prodigy' has no width scaling rule"),
    (dict(name="schedule_free_adamw", lr_scaling="mup"),
     "optimizer 'schedule_free_adamw' has no width scaling rule"),
    (dict(name="adamh", weight_decay_scaling="independent"),
     "optimizer 'adamh' (native) has no weight decay to make independent"),
    (dict(name="adamw", lr_scaling="none", weight_decay_scaling="independent"),
     "weight_decay_scaling='independent' needs a learning-rate rule"),
    (dict(name="adamw", lr_scaling="mup", parametrization="standard"),
     "lr_scaling='mup' scales rates away from model.base_width, which only"),
    (dict(name="adamw", weight_decay_scaling="independent", parametrization="standard"),
     "weight_decay_scaling='independent' scales the decay as base_width / d_model"),
])
def test_bad_settings_fail_with_one_line_naming_the_setting(settings, message):
  parametrization = settings.pop("parametrization", "mup")
  with pytest.raises(ConfigError) as e:
    build(d_model=2 * BASE, parametrization=parametrization, **settings)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_bad_weight_decay_mode_is_a_config_error():
  from optbench_jax import config as config_lib   # pylint: disable=import-outside-toplevel
  c = tiny.micro_config("/unused", steps=4)
  c.optimizer.weight_decay_scaling = "coupled"
  with pytest.raises(ConfigError, match="weight_decay_scaling must be 'decoupled' or "
                                        "'independent', got 'coupled'"):
    config_lib.resolve(c)


def test_moe_experts_take_the_dense_rule_and_the_router_its_fixed_fan_out():
  """Experts are matrices of their own (the ``exp`` axis a batch axis); the router's fan-out
  (experts) does not grow: Adam x 1/m_w on both, Muon x 1 on experts and sqrt(1/m_w) on it."""
  for name, expert, router in (("adamw", 0.25, 0.25), ("muon", 1.0, 0.5)):
    got = hidden_multipliers(name, 4 * BASE, kind="moe", num_experts=4, experts_top_k=2)
    by_leaf = {key.split("']['")[-2]: c for key, (g, c) in got.items()
               if "moe" in key}
    assert by_leaf["router"] == pytest.approx(router), (name, by_leaf)
    assert [by_leaf[k] for k in ("gate_proj", "up_proj", "down_proj")] == pytest.approx(
        [expert] * 3), (name, by_leaf)
