"""The model section of a config, resolved and validated once (sentinels -> values).

``ModelSpec.from_config`` accepts the ``config.model`` ConfigDict (schema in
``optbench_jax/config.py``), a plain dict with the same keys, or a ModelSpec. It
resolves the sentinels (``num_kv_heads=0`` -> num_heads, ``ffn_dim=0`` ->
the SwiGLU rule) and raises ONE ValueError naming the offending key before
anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from optbench_jax.models import layers
from optbench_jax.models.parametrization import PARAMETRIZATIONS

KINDS = ("llama", "moe")
REMAT = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")
# auto: cuDNN flash on GPU (bf16/fp16), Pallas splash on TPU, blocked on CPU (attention_kernels).
ATTENTION_IMPLS = ("auto", "xla", "blocked", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  kind: str = "llama"
  num_layers: int = 12
  d_model: int = 768
  num_heads: int = 12
  num_kv_heads: int = 0
  ffn_dim: int = 0
  vocab_size: int = 50304
  tie_embeddings: bool = True
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  init_std: float = 0.02
  z_loss: float = 0.0
  scan_layers: bool | None = None   # None: auto (``llama.scans_layers``)
  remat: str = "none"
  attention_impl: str = "auto"
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  num_experts: int = 0
  experts_top_k: int = 2
  capacity_factor: float = 0.0
  moe_aux_loss_coef: float = 0.1
  moe_z_loss_coef: float = 0.01
  # Width / depth parametrization (models/parametrization.py).
  parametrization: str = "standard"
  base_width: int = 256
  base_depth: int = 2
  mup_embedding_multiplier: float = 10.0
  mup_output_multiplier: float = 1.0

  @classmethod
  def from_config(cls, model_cfg: Any) -> "ModelSpec":
    if isinstance(model_cfg, ModelSpec):
      return model_cfg
    values = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
    spec = cls(**values)
    spec = dataclasses.replace(
        spec,
        num_kv_heads=spec.num_kv_heads or spec.num_heads,
        ffn_dim=layers.ffn_hidden_dim(spec.d_model, spec.ffn_dim))
    spec.validate()
    return spec

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def dtype(self):
    return jnp.dtype(self.compute_dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def validate(self) -> None:
    """The one check of a model's settings; raises ONE ValueError naming the key.

    The trainer's config checks call this (through ``from_config``), so a bad
    model setting has one message, from here.
    """
    def fail(key, why):
      raise ValueError(f"model.{key}={getattr(self, key)!r}: {why}")

    def integer(key, minimum):
      value = getattr(self, key)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(key, f"must be an integer >= {minimum}")

    if self.kind not in KINDS:
      fail("kind", f"must be one of {list(KINDS)}")
    for key in ("num_layers", "d_model", "num_heads", "num_kv_heads", "vocab_size", "ffn_dim"):
      integer(key, 1)
    if self.d_model % self.num_heads:
      raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.num_heads "
                       f"({self.num_heads})")
    if self.head_dim % 2:
      fail("num_heads", f"head_dim = d_model / num_heads = {self.head_dim} must be even (RoPE)")
    if self.num_heads % self.num_kv_heads:
      fail("num_kv_heads", f"must divide num_heads={self.num_heads} (grouped-query attention)")
    if not (self.scan_layers is None or isinstance(self.scan_layers, bool)):
      fail("scan_layers", "must be True, False or None (auto: unrolled on CPU, scanned on GPU/TPU)")
    if self.remat not in REMAT:
      fail("remat", f"must be one of {list(REMAT)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      fail("attention_impl", f"must be one of {list(ATTENTION_IMPLS)}")
    for key in ("compute_dtype", "param_dtype"):
      if getattr(self, key) not in DTYPES:
        fail(key, f"must be one of {list(DTYPES)}")
    for key in ("norm_eps", "init_std", "rope_theta"):
      if not getattr(self, key) > 0:
        fail(key, "must be > 0")
    if self.z_loss < 0:
      fail("z_loss", "must be >= 0")
    if self.kind == "moe":
      # One expert is a dense layer with a router: not a mixture, so not accepted.
      integer("num_experts", 2)
      if not 1 <= self.experts_top_k <= self.num_experts:
        fail("experts_top_k", f"must be in [1, num_experts={self.num_experts}]")
      if self.capacity_factor < 0:
        fail("capacity_factor", "must be >= 0 (0 = dropless)")
      for key in ("moe_aux_loss_coef", "moe_z_loss_coef"):
        if getattr(self, key) < 0:
          fail(key, "must be >= 0")
    elif self.num_experts:
      fail("num_experts", "must be 0 for kind='llama' (set kind='moe' for experts)")
    if self.parametrization not in PARAMETRIZATIONS:
      fail("parametrization", f"must be one of {list(PARAMETRIZATIONS)}")
    for key in ("base_width", "base_depth"):
      integer(key, 1)
    for key in ("mup_embedding_multiplier", "mup_output_multiplier"):
      value = getattr(self, key)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        fail(key, "must be a number > 0")
