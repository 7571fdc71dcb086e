"""Llama-style decoder (dense or MoE) with layers stacked by ``nn.scan``.

Architecture (Semenov et al. 2025 / Llama): token embedding, L pre-norm blocks
  x = x + Attn(RMSNorm(x));  x = x + MLP(RMSNorm(x))
(MLP = SwiGLU, or a top-k MoE of SwiGLU experts for kind='moe'), a final
RMSNorm and the LM head (tied: logits = h E^T; untied: h W_head). No biases.
Init N(0, init_std^2) everywhere except the projections writing into the
residual stream (o_proj, down_proj), which use init_std / sqrt(2 L): the
``standard`` parametrization. ``mup`` and ``completep`` change these stds and
multiply the embedding output, the query (1 / hd attention), each residual
branch and the logits by the numbers of ``parametrization.multipliers``.

The L blocks are one ``nn.scan`` over stacked parameters (leading axis L under
``params['layers']``). ``scan_layers=True`` runs it as a loop, so compile time
does not grow with depth; ``scan_layers=False`` keeps the same parameter tree
and fully unrolls it. ``None`` (the default) is ``scans_layers``: unrolled on
CPU, where the loop's stacking of each layer's residuals (dynamic-update-slice
copies) cost 10-19% of the small benchmark step (equal at 124M), and unrolled
programs compiled within 5% of the loop up to 12 layers (BUILD_NOTES.md);
a loop on GPU/TPU, where compile time at 24-32 layers matters more.
``remat``: 'full' recomputes each block in the backward pass; 'dots' saves
only the weight matmul outputs (``dots_with_no_batch_dims_saveable``) and
recomputes the rest (norms, activations, attention scores).
Inside a block the activations are tokens [B*S, d] (a free reshape of [B, S,
d]): every projection is a 2-D matmul, which XLA:CPU runs 2-3x faster in the
backward pass than the same 3-D one (``layers.token_axes``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from optbench_jax.models import attention, layers, moe, parametrization, sharding
from optbench_jax.models.spec import ModelSpec

# Auxiliary losses: per layer already x coef / L, so summed over layers;
# per-layer outputs are kept stacked [L, ...]; other aux entries are
# diagnostics, averaged over layers.
LOSS_AUX = ("moe_aux_loss", "router_z_loss")
PER_LAYER_AUX = ("attn_max_logits",)
# The collection ``report_activations`` sows into (bench/coord_check.py reads it).
ACTIVATIONS = "intermediates"


class Block(nn.Module):
  """One pre-norm decoder block; the scan body: (x, ) -> (x, per-layer aux).

  ``report_activations=True`` sows the attention and MLP outputs (before the
  residual-branch multiplier) into the ``intermediates`` collection.
  """
  spec: ModelSpec
  mesh: Any = None
  rules: tuple = sharding.DEFAULT_RULES
  report_max_logits: bool = False
  report_activations: bool = False

  @nn.compact
  def __call__(self, x):
    s = self.spec
    dt, pdt = s.dtype, s.params_dtype
    mult = parametrization.multipliers(s)
    hidden_std, out_std = mult.hidden_std, mult.residual_std
    b, n, d = x.shape
    # The block works on tokens [B*S, d] (a free reshape; see layers.token_axes).
    x = sharding.constrain(x.reshape(b * n, d), layers.token_axes(2, "act_embed"), self.mesh,
                           self.rules)
    h = layers.RMSNorm(s.norm_eps, dt, pdt, name="attn_norm")(x)
    attn = attention.CausalSelfAttention(
        s.num_heads, s.num_kv_heads, s.head_dim, s.rope_theta, hidden_std, out_std, dt, pdt,
        self.mesh, self.rules, self.report_max_logits, s.attention_impl, mult.query,
        name="attn")(h.reshape(b, n, d))
    attn, max_logits = attn if self.report_max_logits else (attn, None)
    _report(self, "attention_output", attn)
    x = x + _times(attn.reshape(b * n, d), mult.residual_branch)
    x = sharding.constrain(x, layers.token_axes(2, "act_embed"), self.mesh, self.rules)
    h = layers.RMSNorm(s.norm_eps, dt, pdt, name="mlp_norm")(x)
    if s.kind == "moe":
      y, aux = moe.MoE(s.num_experts, s.experts_top_k, s.ffn_dim, s.capacity_factor,
                       s.moe_aux_loss_coef, s.moe_z_loss_coef, s.num_layers, hidden_std, out_std,
                       dt, pdt, self.mesh, self.rules, name="moe")(h.reshape(b, n, d))
      y = y.reshape(b * n, d)
    else:
      y = layers.SwiGLU(s.ffn_dim, hidden_std, out_std, dt, pdt, self.mesh, self.rules,
                        name="mlp")(h)
      aux = {key: jnp.float32(0.0) for key in LOSS_AUX}
    if max_logits is not None:
      aux = {**aux, "attn_max_logits": max_logits}
    _report(self, "mlp_output", y)
    x = sharding.constrain(x + _times(y.astype(x.dtype), mult.residual_branch),
                           layers.token_axes(2, "act_embed"), self.mesh, self.rules)
    return x.reshape(b, n, d), aux



def _report(module: nn.Module, name: str, value) -> None:
  """Sows ``value`` as activation ``name`` when the module reports activations."""
  if module.report_activations:
    module.sow(ACTIVATIONS, name, value)


def _times(y, multiplier: float):
  """``y * multiplier`` in y's dtype; a multiplication by 1.0 is left out of the program."""
  return y if multiplier == 1.0 else y * jnp.asarray(multiplier, y.dtype)


def _remat_policy(remat: str):
  if remat == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return None  # 'full': save nothing


def scans_layers(scan_layers: bool | None, platform: str) -> bool:
  """Whether the layer stack runs as a loop: ``scan_layers``, or for None, on GPU/TPU only."""
  return platform != "cpu" if scan_layers is None else bool(scan_layers)


class LanguageModel(nn.Module):
  """tokens int32 [B, S] -> (logits float32 [B, S, V], aux dict of float32 scalars).

  ``report_max_logits=True`` adds ``aux['attn_max_logits']`` float32 [L, H]:
  per layer and query head, the largest pre-softmax attention logit of the
  batch (``attention.max_logits``; QK-clip's S_h, no gradient).
  ``report_activations=True`` sows, into the ``intermediates`` collection (apply
  with ``mutable=[ACTIVATIONS]``), the embedding output, each layer's attention
  and MLP outputs (stacked [L, ...]), the residual stream after the last block
  and the logits: the coordinate check's probes (bench/coord_check.py). Off by
  default, so the default model's program is unchanged.
  """
  spec: ModelSpec
  mesh: Any = None
  rules: tuple = sharding.DEFAULT_RULES
  report_max_logits: bool = False
  report_activations: bool = False

  @nn.compact
  def __call__(self, tokens):
    s = self.spec
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an integer array [batch, seq], got {tokens.dtype}"
                       f"{list(tokens.shape)}")
    dt, pdt = s.dtype, s.params_dtype
    embed = nn.Embed(s.vocab_size, s.d_model, dtype=dt, param_dtype=pdt,
                     embedding_init=layers.normal_init(s.init_std, ("vocab", "embed")),
                     name="embed")
    tokens = sharding.constrain(tokens, ("batch", "seq"), self.mesh, self.rules)
    mult = parametrization.multipliers(s)
    x = _times(embed(tokens), mult.embedding)
    x = sharding.constrain(x, ("batch", "seq", "act_embed"), self.mesh, self.rules)
    _report(self, "embedding", x)

    block = Block
    if s.remat != "none":
      block = nn.remat(Block, prevent_cse=False, policy=_remat_policy(s.remat))
    scanned = scans_layers(s.scan_layers, sharding.platform_of(self.mesh))
    # Sown activations are stacked over layers like the parameters (only when reported).
    axes = {"params": 0, **({ACTIVATIONS: 0} if self.report_activations else {})}
    stack = nn.scan(block, variable_axes=axes, split_rngs={"params": True},
                    length=s.num_layers, unroll=1 if scanned else s.num_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    x, per_layer = stack(s, self.mesh, self.rules, self.report_max_logits,
                         self.report_activations, name="layers")(x)
    _report(self, "residual_stream", x)

    b, n, d = x.shape
    h = layers.RMSNorm(s.norm_eps, dt, pdt, name="final_norm")(x.reshape(b * n, d))
    if s.tie_embeddings:
      head = embed.embedding.T  # [d, V]: logits = h E^T
    else:
      head = layers.Kernel((s.d_model, s.vocab_size), s.init_std, ("embed", "vocab"), pdt,
                           name="lm_head")()
    # Matmul in the compute dtype, accumulated and returned in float32.
    logits = jnp.einsum("td,dv->tv", h.astype(dt), head.astype(dt),
                        preferred_element_type=jnp.float32).reshape(b, n, -1)
    logits = _times(logits, mult.output)
    logits = sharding.constrain(logits, ("batch", "seq", "act_vocab"), self.mesh, self.rules)
    _report(self, "logits", logits)
    aux = {key: (jnp.sum(v) if key in LOSS_AUX else v if key in PER_LAYER_AUX else jnp.mean(v))
           for key, v in per_layer.items()}
    return logits, aux
