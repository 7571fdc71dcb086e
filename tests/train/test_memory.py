"""Activation-memory estimate (train/memory.py) vs XLA's compiled memory_analysis, the fit advice,
and the dry run's memory report.

Agreement: the estimate of one gradient evaluation's activations is within
[0.75, 1.4] x ``memory_analysis().temp_size_in_bytes`` of the jitted gradient
(CPU, float32; XLA:CPU computes bfloat16 in float32, so no bfloat16 check here).
"""

import jax
import jax.numpy as jnp
import pytest

from configs import base
from optbench_jax import models as M
from optbench_jax import train
from optbench_jax.train import memory
from optbench_jax.config import ConfigError

# scan_layers=True: the estimate describes the scanned stack (the default on GPU/TPU).
SMALL = dict(num_layers=3, d_model=128, num_heads=4, ffn_dim=384, vocab_size=512, scan_layers=True)


def _compiled_temp_bytes(cfg, batch, seq):
  model = M.build_model(cfg)
  tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  loss = lambda p, t: M.losses.lm_loss(model.apply({"params": p}, t)[0], t)[0]
  compiled = jax.jit(jax.grad(loss)).lower(M.abstract_params(cfg), tokens).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("remat,seq", [("none", 512), ("dots", 256), ("full", 512)])
def test_estimate_agrees_with_compiled_memory(remat, seq):
  cfg = dict(SMALL, remat=remat, attention_impl="xla")
  estimate = memory.activation_bytes(cfg, seq, 4, "xla")["total"]
  ratio = estimate / _compiled_temp_bytes(cfg, 4, seq)
  assert 0.75 <= ratio <= 1.4, ratio


def test_blocked_estimate_agrees_with_compiled_memory():
  cfg = dict(SMALL, attention_impl="blocked")
  estimate = memory.activation_bytes(cfg, 512, 4, "blocked")
  assert estimate["total"] < memory.activation_bytes(cfg, 512, 4, "xla")["total"]
  ratio = estimate["total"] / _compiled_temp_bytes(cfg, 4, 512)
  assert 0.75 <= ratio <= 1.4, ratio


def test_flash_drops_the_quadratic_term():
  cfg = SMALL
  xla_short = memory.activation_bytes(cfg, 1024, 1, "xla")["total"]
  xla_long = memory.activation_bytes(cfg, 4096, 1, "xla")["total"]
  flash_short = memory.activation_bytes(cfg, 1024, 1, "splash")["total"]
  flash_long = memory.activation_bytes(cfg, 4096, 1, "splash")["total"]
  assert flash_long == pytest.approx(4 * flash_short)           # linear in S
  assert xla_long / xla_short > 8                                # S^2 dominates
  # Tensor parallelism splits heads, ffn and vocabulary.
  assert memory.activation_bytes(cfg, 1024, 1, "xla", tensor=4)["total"] < xla_short / 2


def test_fit_advice_names_the_setting_that_fits():
  cfg = dict(SMALL, num_layers=32, d_model=1024, num_heads=16, ffn_dim=4096,
             compute_dtype="bfloat16", attention_impl="xla")
  fit = memory.check_fit("h100", cfg, 4096, 8, 1, 0.0)
  # Least recompute first: the flash kernel without remat fits before remat is needed.
  assert not fit.fits and fit.advice.startswith(
      "fits with model.remat=none model.attention_impl=cudnn"), fit
  assert memory.check_fit("h100", dict(cfg, attention_impl="auto"), 4096, 8, 1, 0.0).fits
  ok = memory.check_fit("h200", dict(cfg, remat="full"), 4096, 1, 1, 0.0)
  assert ok.fits and ok.advice == "fits"
  hopeless = memory.check_fit("v5e", cfg, 4096, 64, 1, 0.0)
  assert "does not fit with any" in hopeless.advice
  with pytest.raises(ValueError, match="unknown device"):
    memory.check_fit("a100", cfg, 4096, 8, 1, 0.0)


def _config():
  c = base.base_config()
  c.model.update(SMALL, compute_dtype="bfloat16", attention_impl="xla")
  c.data.update(seq_len=4096, global_batch_size=128, synthetic_vocab_size=512)
  c.mesh.update(data=1, fsdp=8)
  return c


def test_dry_run_reports_activations_and_warns(capsys):
  report = train.dry_run(_config(), device="v5e")
  out = capsys.readouterr().out
  assert report["activation_bytes_per_device"] > 0
  assert report["total_bytes_per_device"] > report["activation_bytes_per_device"]
  assert set(report["fits"]) == {"v5e"}
  assert "WARNING: v5e" in out and "fits with model.remat=" in out, out
  with pytest.raises(ConfigError, match="dry_run_device"):
    train.dry_run(_config(), device="tpu9")


def test_dry_run_says_where_each_total_holds(capsys):
  """Every per-device total names the machine it is for; the parameter counts include the
  non-embedding one the papers' size names use."""
  train.dry_run(_config())
  out = capsys.readouterr().out
  assert "non-embedding" in out
  totals = [line for line in out.splitlines() if "in all" in line]
  assert len(totals) == 1 + len(memory.DEVICES)
  for line in totals:
    where = line.removeprefix("WARNING:").strip().split(" ")[0]
    assert where == "this" and "this machine" in line or where in memory.DEVICES, line
