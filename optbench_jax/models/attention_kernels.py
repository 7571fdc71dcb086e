"""Fused causal attention kernels chosen by ``model.attention_impl``; XLA is the portable fallback.

``attention_impl`` (validated by ``ModelSpec``) is resolved against the
backend the model runs on (``resolve``), before anything is compiled:

=========  =====================================================================
auto       cuDNN flash attention on GPU when the compute dtype is bf16/fp16
           (XLA for float32: cuDNN flash has no float32 kernel), Pallas splash
           attention on TPU, blocked on CPU.
xla        ``jax.nn.dot_product_attention`` (``models/attention.py``): the
           [B, H, S, S] scores are materialised (and saved for the backward
           pass unless remat recomputes them).
blocked    ``blocked_attention.blocked_causal_attention``: plain XLA ops over
           query blocks that skip the masked half (5/8 of the scores for 4
           blocks). Every backend; the fastest on CPU (1.6-1.9x XLA's fwd+bwd
           on the benchmark shapes; BUILD_NOTES.md).
cudnn      ``jax.nn.dot_product_attention(implementation="cudnn")``: FlashAttention
           in cuDNN (Dao 2023). GPU only; bf16/fp16; head_dim a multiple of 8,
           <= 128.
splash     ``jax.experimental.pallas.ops.tpu.splash_attention`` (the Pallas TPU
           flash kernel MaxText uses), causal mask, GQA native. On TPU it is
           compiled by Mosaic; on CPU it runs in Pallas *interpret* mode
           (automatically: the only way it runs there; slow, for tests and
           for checking a TPU config on a laptop). Refused on GPU (a Mosaic
           TPU kernel; use cudnn). The sequence length must be a multiple of
           128 (the kernel's lane width); blocks are the largest of 512 / 256 /
           128 that divide it (MaxText's default is 512).
=========  =====================================================================

Neither kernel materialises the [S, S] scores: they keep O(S) residuals per
head (the output and the row log-sum-exp) and recompute the scores blockwise
in the backward pass. Both are exact attention (no approximation); they differ
from XLA's only in float rounding (tested: ``tests/models/test_attention_kernels.py``).

Sharding. Under a multi-device mesh the kernels run inside ``jax.shard_map``:
batch over the activation batch axes (``data x fsdp x expert``), heads over
``tensor``, the sequence whole (a sharded sequence is refused). kv heads are
split over ``tensor`` together with the q heads only when both head counts
divide it (so q head h keeps its kv head h // (H / Hkv) on the same device);
otherwise all heads stay whole on every device (correct, with the attention
work repeated over ``tensor``), as the divisibility fallback of
``sharding.mesh_spec`` does for parameters.

QK-clip's max-logit report (``report_max_logits``) works with every
implementation: it is computed next to the attention by ``attention.max_logits``
(forward only, no gradient), so with a fused kernel the step still holds one
transient [B, H, S, S] float32 tensor per layer in the forward pass.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from optbench_jax.models import blocked_attention, sharding

KERNELS = ("cudnn", "splash")
SPLASH_LANES = 128
SPLASH_BLOCKS = (512, 256, 128)
_CUDNN_DTYPES = ("bfloat16", "float16")


def resolve(impl: str, platform: str, compute_dtype: str, head_dim: int) -> str:
  """The concrete implementation ('xla' | 'blocked' | 'cudnn' | 'splash') of ``impl`` there.

  Raises ONE ValueError naming ``model.attention_impl`` when the backend, dtype
  or head size cannot run it.
  """
  dtype = str(jnp.dtype(compute_dtype))
  if impl == "auto":
    if platform == "gpu" and dtype in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= 128:
      return "cudnn"
    return {"tpu": "splash", "cpu": "blocked"}.get(platform, "xla")
  fail = lambda why: ValueError(f"model.attention_impl={impl!r}: {why}")
  if impl == "cudnn":
    if platform != "gpu":
      raise fail(f"cuDNN flash attention needs a GPU; this run is on {platform} "
                 "(use 'auto' or 'xla')")
    if dtype not in _CUDNN_DTYPES:
      raise fail(f"cuDNN flash attention needs model.compute_dtype bfloat16 or float16, "
                 f"got {dtype}")
    if head_dim % 8 or head_dim > 128:
      raise fail(f"cuDNN flash attention needs head_dim a multiple of 8 and <= 128, "
                 f"got {head_dim}")
  elif impl == "splash":
    if platform not in ("tpu", "cpu"):
      raise fail(f"splash attention is a Pallas TPU kernel and cannot run on {platform} "
                 "(use 'cudnn' on GPU)")
  elif impl not in ("xla", "blocked"):
    raise fail(f"must be one of ['auto', 'xla', 'blocked', {', '.join(map(repr, KERNELS))}]")
  return impl


def check_seq_len(impl: str, seq_len: int) -> None:
  """Raises ValueError if the resolved ``impl`` cannot take sequences of ``seq_len``."""
  if impl == "splash" and seq_len % SPLASH_LANES:
    raise ValueError(f"model.attention_impl='splash' needs the sequence length to be a multiple "
                     f"of {SPLASH_LANES}, got {seq_len} (use 'xla')")


def splash_block(seq_len: int) -> int:
  check_seq_len("splash", seq_len)
  return next(b for b in SPLASH_BLOCKS if seq_len % b == 0)


def _splash_kernel(num_heads: int, seq_len: int, interpret: bool, block: int):
  # Built per trace (its mask arrays become constants of the traced function,
  # so a cached kernel would leak tracers); the mask's NumPy block analysis is
  # cached inside jax. Imported here: Pallas TPU is only needed when chosen.
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len))] * num_heads)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)


def splash_attention(q, k, v, interpret: bool, block: int | None = None):
  """Causal softmax(q k^T / sqrt(hd)) v by the splash kernel; q [B, S, H, hd], k, v [B, S, Hkv, hd].

  The kernel takes one sequence's [heads, S, hd] (vmapped over the batch),
  reads kv head h // (H / Hkv) for q head h (as XLA's GQA does) and does not
  scale the logits, so q is scaled by 1/sqrt(hd) first. ``block``: the q and
  kv tile (a multiple of 128 dividing S; default ``splash_block(S)``).
  """
  _, s, h, hd = q.shape
  block = splash_block(s) if block is None else block
  if block % SPLASH_LANES or s % block:
    raise ValueError(f"splash block {block} must be a multiple of {SPLASH_LANES} dividing "
                     f"the sequence length {s}")
  kernel = _splash_kernel(h, s, interpret, block)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  q = q * jnp.asarray(1.0 / math.sqrt(hd), q.dtype)
  out = jax.vmap(kernel)(heads_first(q), heads_first(k), heads_first(v))
  return heads_first(out)


def cudnn_attention(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def _per_shard(fn, q, k, v, mesh, rules):
  """Runs ``fn(q, k, v)`` on each device's batch and head shard (module docstring)."""
  q_spec = sharding.mesh_spec(("batch", "seq", "act_heads", None), q.shape, mesh, rules)
  kv_spec = sharding.mesh_spec(("batch", "seq", "act_kv_heads", None), k.shape, mesh, rules)
  if q_spec[1] is not None:
    raise ValueError("model.attention_impl: the fused attention kernels need the whole sequence "
                     f"on each device; the rules shard it over {q_spec[1]} (use 'xla')")
  if q_spec[2] != kv_spec[2]:   # kv heads cannot follow the q heads' split: keep heads whole
    q_spec, kv_spec = P(q_spec[0], None, None, None), P(kv_spec[0], None, None, None)
  if all(axis is None for axis in q_spec) and all(axis is None for axis in kv_spec):
    return fn(q, k, v)
  return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                       check_vma=False)(q, k, v)


def attention(q, k, v, impl: str, mesh=None, rules=sharding.DEFAULT_RULES):
  """Causal attention by the resolved ``impl`` ('xla' | 'blocked' | 'cudnn' | 'splash').

  q [B, S, H, hd], k, v [B, S, Hkv, hd] -> [B, S, H, hd] in q's dtype. The two
  plain-XLA implementations are left to XLA's sharding propagation; the fused
  kernels run per shard (module docstring).
  """
  if impl == "xla":
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)
  if impl == "blocked":
    return blocked_attention.blocked_causal_attention(q, k, v)
  if impl == "cudnn":
    fn = cudnn_attention
  elif impl == "splash":
    fn = functools.partial(splash_attention, interpret=sharding.platform_of(mesh) != "tpu")
  else:
    raise ValueError(f"attention_kernels.attention: no implementation {impl!r}; one of "
                     f"{['xla', 'blocked', *KERNELS]}")
  if mesh is None or mesh.size == 1:
    return fn(q, k, v)
  return _per_shard(fn, q, k, v, mesh, rules)
