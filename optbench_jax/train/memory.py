"""Activation memory per device from the shapes, and whether a run fits a named device's HBM.

Counted per device, for one micro-batch (``grad_accum_steps`` scans over
micro-batches, so only one micro-batch's activations are alive), with

  b = micro-batch rows per device = global_batch / grad_accum / (data x fsdp x expert)
  t = b S tokens,  c = bytes of model.compute_dtype,  H', Hkv', f', V' = the
  heads, kv heads, ffn width and vocabulary after the tensor split,  hd = head_dim.

Residuals a layer saves for the backward pass (what ``jax.ad_checkpoint.
print_saved_residuals`` lists for our block, float32 case):

  remat none:  t (6 d + 2 (H' + Hkv') hd + 6 f') c  +  A
               (block input, the two norm outputs, q/k/v after RoPE, the
               attention output, the residual; gate, up, their SiLU parts,
               the product: 6 f-wide tensors)
  remat dots:  t (3 d + (H' + 2 Hkv') hd + 2 f') c
               (the scan carry and the weight-matmul outputs only:
               q/k/v, o, gate, up, down; attention is recomputed)
  remat full:  t d c           (the scan carry only)

  A (attention scores, remat none only): xla: b H' S^2 (4 + c) -- the
  float32 softmax output and the probabilities in the compute dtype, i.e.
  [B, H, S, S] materialised twice (JAX also lists the float32 logits and the
  boolean mask; XLA fuses them away: fitted to memory_analysis);
  blocked: the xla term times ``blocked_attention.computed_fraction(S)``
  ((n + 1) / (2 n) for n query blocks: only the visible blocks are saved);
  cudnn / splash (flash): t H' 4 (the row log-sum-exp), no S^2 term.

  activations = L x saved(layer) + working(layer) + logits
  working(layer) = the remat-none residuals of one layer, A included (the
                   layer being recomputed and differentiated in the backward)
  logits = 2 t V' 4 (float32 logits' softmax kept by the loss, and its cotangent)
  QK-clip (optimizer.qk_clip_tau > 0) adds b H' S^2 4 transient (its max-logit
  einsum, forward only).
  MoE layers replace the 6 f' t term by the routed copies: k t (2 d + 6 f) c
  (dropless: each of the t k assignments through its expert) + t E 4 (router).

Gradients add the parameters' bytes once more (twice with grad accumulation:
the accumulator and one micro-batch's gradient). The total a run needs is
params + optimizer state + gradients + activations; it fits a device when
that is at most ``USABLE_FRACTION`` of its HBM (XLA's workspace, fragmentation
and the runtime take the rest).

The layer stack is assumed scanned (``model.scan_layers``' default on GPU
and TPU). Unrolled, XLA may keep more alive with remat='dots' (on CPU, where
unrolling is the default, up to ~1.8x the estimate).

Agreement with XLA (``tests/train/test_memory.py``, CPU, float32): the
estimate of activations vs the compiled gradient function's
``memory_analysis().temp_size_in_bytes``. XLA:CPU computes bfloat16 in float32
internally, so the CPU check is float32 only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from optbench_jax.models import attention_kernels, blocked_attention
from optbench_jax.models.spec import ModelSpec

GIB = 2.0**30
USABLE_FRACTION = 0.9
# name -> (platform, HBM bytes per device)
DEVICES = {
    "v5e": ("tpu", 16 * GIB),
    "v5p": ("tpu", 95 * GIB),
    "h100": ("gpu", 80 * GIB),
    "h200": ("gpu", 141 * GIB),
}


def _split(n: int, ways: int) -> float:
  # A dimension the tensor axis cannot divide is replicated (sharding.mesh_spec's fallback).
  return n / ways if ways > 1 and n % ways == 0 else n


def activation_bytes(model_cfg: Any, seq_len: int, micro_batch_per_device: float,
                     attention_impl: str, tensor: int = 1, qk_clip: bool = False) -> dict:
  """The module docstring's estimate, in bytes per device: saved, working, logits, total."""
  s = ModelSpec.from_config(model_cfg)
  c = jnp.dtype(s.compute_dtype).itemsize
  b, S, d, hd = micro_batch_per_device, seq_len, s.d_model, s.head_dim
  t = b * S
  h, hkv = _split(s.num_heads, tensor), _split(s.num_kv_heads, tensor)
  f, v = _split(s.ffn_dim, tensor), _split(s.vocab_size, tensor)
  if attention_impl in ("xla", "blocked"):
    scores = b * h * S * S * (4 + c)
    if attention_impl == "blocked":
      scores *= blocked_attention.computed_fraction(S)
  else:
    scores = t * h * 4
  if s.kind == "moe":
    k = s.experts_top_k
    mlp_none, mlp_dots = k * t * (2 * d + 6 * s.ffn_dim) * c, k * t * (2 * d + 2 * s.ffn_dim) * c
    router = t * s.num_experts * 4
  else:
    mlp_none, mlp_dots, router = t * 6 * f * c, t * 2 * f * c, 0
  none = t * (6 * d + 2 * (h + hkv) * hd) * c + mlp_none + router + scores
  saved = {"none": none,
           "dots": t * (3 * d + (h + 2 * hkv) * hd) * c + mlp_dots + router,
           "full": t * d * c}[s.remat]
  working = none + (b * h * S * S * 4 if qk_clip else 0)
  logits = 2 * t * v * 4
  total = s.num_layers * saved + working + logits
  return dict(saved_per_layer=saved, working=working, logits=logits, total=total)


@dataclasses.dataclass(frozen=True)
class Fit:
  device: str
  hbm_bytes: float
  needed_bytes: float
  fits: bool
  advice: str


def check_fit(device: str, model_cfg: Any, seq_len: int, micro_batch_per_device: float,
              tensor: int, fixed_bytes: float, qk_clip: bool = False) -> Fit:
  """Whether params + state + grads (``fixed_bytes``) + activations fit ``device``; if not,
  the first remat / attention setting (least recompute first) that does."""
  if device not in DEVICES:
    raise ValueError(f"unknown device {device!r}; one of {sorted(DEVICES)}")
  platform, hbm = DEVICES[device]
  spec = ModelSpec.from_config(model_cfg)
  usable = USABLE_FRACTION * hbm

  def needed(remat, impl_setting):
    candidate = dataclasses.replace(spec, remat=remat, attention_impl=impl_setting)
    impl = attention_kernels.resolve(impl_setting, platform, spec.compute_dtype, spec.head_dim)
    return fixed_bytes + activation_bytes(candidate, seq_len, micro_batch_per_device, impl,
                                          tensor, qk_clip)["total"]

  try:
    current = needed(spec.remat, spec.attention_impl)
  except ValueError as e:   # e.g. attention_impl='cudnn' planned for a TPU
    return Fit(device, hbm, math.nan, False, str(e))
  if current <= usable:
    return Fit(device, hbm, current, True, "fits")
  flash = "cudnn" if platform == "gpu" else "splash"
  flash_ok = platform != "gpu" or (jnp.dtype(spec.compute_dtype).itemsize == 2)
  options = [(remat, impl) for remat in ("none", "dots", "full")
             for impl in ((spec.attention_impl, flash) if flash_ok else (spec.attention_impl,))]
  for remat, impl in options:
    if (remat, impl) == (spec.remat, spec.attention_impl):
      continue
    if needed(remat, impl) <= usable:
      resolved = attention_kernels.resolve(impl, platform, spec.compute_dtype, spec.head_dim)
      shown = impl if impl == resolved else f"{impl} (= {resolved} there)"
      return Fit(device, hbm, current, False,
                 f"fits with model.remat={remat} model.attention_impl={shown} "
                 f"({needed(remat, impl) / GIB:.1f} GiB)")
  return Fit(device, hbm, current, False,
             "does not fit with any remat / attention setting: shard over more devices "
             "(mesh.fsdp), or raise data.grad_accum_steps")
