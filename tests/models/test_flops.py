"""FLOPs per token against a hand calculation."""

import importlib

import pytest

from optbench_jax.models import flops


def test_124m_by_hand():
  cfg = importlib.import_module("configs.124m").get_config().model
  d, f, v, n_layer, s = 768, 2048, 50304, 12, 512
  matmul = n_layer * (4 * d * d + 3 * d * f) + d * v  # q, k, v, o, gate, up, down; LM head
  assert flops.matmul_params(cfg) == matmul == 123_568_128
  expected = 6 * matmul + 12 * n_layer * d * s / 2  # causal halves the attention term
  assert flops.flops_per_token(cfg, s) == expected == 769_720_320


def test_moe_counts_only_active_experts_and_router():
  cfg = importlib.import_module("configs.moe_520m").get_config().model
  d, f, v, n_layer = 768, 2048, 50304, 12
  matmul = n_layer * (4 * d * d + 2 * 3 * d * f + d * 8) + d * v
  assert flops.matmul_params(cfg) == matmul


def test_gqa_and_bad_seq_len():
  cfg = dict(num_layers=1, d_model=64, num_heads=8, num_kv_heads=2, ffn_dim=128, vocab_size=10)
  assert flops.matmul_params(cfg) == 2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 128 + 64 * 10
  with pytest.raises(ValueError, match="seq_len"):
    flops.flops_per_token(cfg, 0)
