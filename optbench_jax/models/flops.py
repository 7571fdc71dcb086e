"""Model FLOPs per token, as MaxText counts them for MFU (the project's one FLOP counter).

  flops_per_token = 6 * N_matmul + 6 * L * d_attn * S

* ``6 * N_matmul``: forward (2 FLOPs per multiply-add) plus backward (twice the
  forward) for every weight matmul: q, k, v, o, the MLP (for MoE: the router
  and only the top_k active experts) and the LM head (the logits matmul runs
  whether or not the head is tied). The embedding lookup is a gather, not a
  matmul, and is excluded; norms, activations and the softmax are ignored.
* attention: Q K^T and A V cost 2 * 2 * S * d_attn FLOPs per token and layer
  forward for full attention (d_attn = num_heads * head_dim), x3 for
  forward + backward = 12 * L * d_attn * S. Causal masking halves it (only the
  lower triangle is needed; REFERENCE section 4 / current MaxText), giving
  6 * L * d_attn * S. This is the *model* count: implementations that compute
  the full square and mask it do more work than is credited.
Optimizer FLOPs are not counted.
"""

from __future__ import annotations

from typing import Any

from optbench_jax.models.spec import ModelSpec


def matmul_params(model_cfg: Any) -> int:
  """Parameters that take part in a matmul for one token (active experts only)."""
  s = ModelSpec.from_config(model_cfg)
  d, hd = s.d_model, s.head_dim
  attn = d * s.num_heads * hd * 2 + d * s.num_kv_heads * hd * 2
  mlp_one = 3 * d * s.ffn_dim
  mlp = s.experts_top_k * mlp_one + d * s.num_experts if s.kind == "moe" else mlp_one
  return s.num_layers * (attn + mlp) + d * s.vocab_size


def flops_per_token(model_cfg: Any, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward) at sequence length ``seq_len``, causal."""
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len} must be >= 1")
  s = ModelSpec.from_config(model_cfg)
  attention = 6 * s.num_layers * s.num_heads * s.head_dim * seq_len  # 12 L d S, halved (causal)
  return float(6 * matmul_params(s) + attention)
