"""Building blocks shared by the dense and MoE models: norms, projections, SwiGLU.

Every parameter is created through ``nn.with_logical_partitioning`` so that the
boxed abstract tree carries logical axis names (``embed``, ``mlp``, ``heads``,
...); ``optbench_jax.models.sharding`` maps them to mesh axes. Kernels are
``(fan_in, fan_out)`` as everywhere in Flax. No biases anywhere (Llama).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from optbench_jax.models import sharding


def normal_init(std: float, axes: tuple):
  """N(0, std^2) initialiser carrying logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


def ffn_hidden_dim(d_model: int, ffn_dim: int = 0) -> int:
  """SwiGLU hidden size: ``ffn_dim`` if given, else int(8 d / 3) rounded up to a multiple of 256.

  Semenov et al. (2025): 2048 for d=768 and 5632 for d=2048.
  """
  if ffn_dim:
    return int(ffn_dim)
  return int(math.ceil(int(8 * d_model / 3) / 256) * 256)


def residual_std(init_std: float, num_layers: int) -> float:
  """Init std of the projections that write into the residual stream (GPT-2 / Llama recipe)."""
  return init_std / math.sqrt(2 * num_layers)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich, 2019) computed in float32: y = x / sqrt(mean(x^2) + eps) * scale.

  The statistic and the scale multiply run in float32 whatever the compute
  dtype; the result is cast back to ``dtype``.
  """
  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def token_axes(ndim: int, feature_axis: str) -> tuple:
  """Logical axes of an activation: ``(batch, feature)`` for tokens [B*S, d], else ``(batch,
  seq, feature)``.

  The dense blocks run on the flattened token axis [B*S, d] (batch-major, so
  sharding it over the batch mesh axes keeps each device's sequences): every
  projection is then a plain 2-D matmul. On XLA:CPU the backward pass of a
  3-D [B, S, d] projection transposes its [B, S, f] operand inside a fused
  loop that runs 2-3x slower than the same 2-D transpose (BUILD_NOTES, CPU
  throughput); the math is unchanged.
  """
  return ("batch", feature_axis) if ndim == 2 else ("batch", "seq", feature_axis)


def dense(features: int, std: float, axes: tuple, dtype, param_dtype, name: str) -> nn.Dense:
  """A bias-free projection with a logical-axis-annotated N(0, std^2) kernel."""
  return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=normal_init(std, axes), name=name)


class Kernel(nn.Module):
  """A bare ``kernel`` parameter of any shape (LM head; the [E, fan_in, fan_out] expert stacks)."""
  shape: tuple
  std: float
  axes: tuple
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self):
    return self.param("kernel", normal_init(self.std, self.axes), self.shape, self.param_dtype)


class SwiGLU(nn.Module):
  """SwiGLU MLP (Shazeer, 2020): down(silu(x W_gate) * (x W_up))."""
  hidden_dim: int
  init_std: float
  out_std: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  mesh: object = None
  rules: tuple = sharding.DEFAULT_RULES

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    gate = dense(self.hidden_dim, self.init_std, ("embed", "mlp"), self.dtype, self.param_dtype,
                 "gate_proj")(x)
    up = dense(self.hidden_dim, self.init_std, ("embed", "mlp"), self.dtype, self.param_dtype,
               "up_proj")(x)
    h = nn.silu(gate) * up
    h = sharding.constrain(h, token_axes(h.ndim, "act_mlp"), self.mesh, self.rules)
    return dense(d, self.out_std, ("mlp", "embed"), self.dtype, self.param_dtype, "down_proj")(h)
