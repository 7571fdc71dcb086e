"""Mixture-of-experts SwiGLU layer: top-k routing, auxiliary losses, three dispatch paths.

Routing (Semenov et al. 2025, after Switch / Mixtral): router logits
``r = x W_r`` (float32, no bias), the top-k experts by logit, and combine
weights ``softmax(top-k logits)`` (softmax over the selected logits only).

Auxiliary losses, each multiplied by its coefficient and divided by the number
of layers (so summing over layers gives coef x layer-mean):
* Switch load balance (Fedus et al. 2021, eq. 4), top-k variant:
  ``E * sum_e f_e P_e`` with ``f_e`` the fraction of the T*k token-expert
  assignments that go to expert e and ``P_e`` the mean over tokens of the full
  softmax ``softmax(r)_e``. It equals 1 under perfectly uniform routing.
* Router z-loss (Zoph et al. 2022, ST-MoE eq. 5): ``mean_t logsumexp(r_t)^2``.

Dispatch:
* dropless (``capacity_factor == 0``): the T*k assignments are sorted by
  expert and the experts run as grouped matmuls with ``jax.lax.ragged_dot``
  (works on CPU, GPU and TPU in jax 0.10.2); nothing is dropped.
* capacity factor (``capacity_factor > 0``, GShard / Switch): per sequence,
  each expert takes at most ``C = ceil(cf * S * k / E)`` assignments, filled
  in priority order (all first choices before any second choice, then token
  order); assignments over capacity are dropped (their share of the output is
  zero; the residual stream carries the token) and counted in
  ``moe_dropped_fraction``. Dispatch / combine are one-hot einsums, so under a
  mesh GSPMD inserts the all-to-alls itself (experts constrained to ``expert``).
* sharded dropless (any multi-device mesh): ``jax.shard_map`` over the mesh,
  expert parallel when the ``expert`` axis is > 1 (with expert=1 every device
  simply routes its own tokens through all experts). Each device holds E / ep experts. Routing
  is computed outside (global, so the aux losses are those of one device).
  Inside, the tokens of the ``expert`` group are all-gathered (each device
  then sees the ep x b_local tokens of its group), every device runs its local
  experts on the assignments routed to them (ragged_dot), and the partial
  outputs are summed and scattered back with ``psum_scatter`` over
  ``expert``. Communicated per layer and device: the group's tokens
  (ep x b x S x d activations, plus the k indices and weights) in, the same
  size out; expert weights are gathered over fsdp/tensor at the shard_map
  boundary (FSDP-style). An all-to-all of only the routed tokens would move
  less (k/E of it) but needs ragged all-to-all or capacity limits; the
  all-gather form is exact, dropless and simple. Devices along ``tensor``
  repeat the same expert work.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from optbench_jax.models import layers, sharding


def route(logits: jax.Array, top_k: int):
  """Top-k routing. logits [..., E] float32 -> (expert ids [..., k], combine weights [..., k])."""
  top_logits, top_ids = jax.lax.top_k(logits, top_k)
  return top_ids, jax.nn.softmax(top_logits, axis=-1)


def load_balance_loss(logits: jax.Array, expert_ids: jax.Array) -> jax.Array:
  """Switch load-balancing loss E * sum_e f_e P_e over all tokens (see module docstring)."""
  num_experts = logits.shape[-1]
  probs = jax.nn.softmax(logits.reshape(-1, num_experts), axis=-1)
  frac = jnp.mean(jax.nn.one_hot(expert_ids.reshape(-1), num_experts, dtype=jnp.float32), axis=0)
  return num_experts * jnp.sum(frac * jnp.mean(probs, axis=0))


def router_z_loss(logits: jax.Array) -> jax.Array:
  """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def dropless_experts(x, expert_ids, weights, w_gate, w_up, w_down, expert_offset=0):
  """Sum over the k assignments of weight * SwiGLU_expert(x), via sort + ragged_dot.

  x [T, d]; expert_ids, weights [T, k]; w_gate, w_up [E_local, d, f];
  w_down [E_local, f, d]. Only experts ``expert_offset .. expert_offset+E_local-1``
  are computed here; other assignments contribute zero (expert parallelism).
  """
  t, k = expert_ids.shape
  e_local = w_gate.shape[0]
  local_ids = expert_ids.reshape(-1) - expert_offset
  is_local = (local_ids >= 0) & (local_ids < e_local)
  sort_key = jnp.where(is_local, local_ids, e_local)  # non-local rows go last
  order = jnp.argsort(sort_key, stable=True)
  token = order // k
  group_sizes = jnp.bincount(sort_key, length=e_local + 1)[:e_local].astype(jnp.int32)
  xs = x[token]
  dt = x.dtype
  gate = jax.lax.ragged_dot(xs, w_gate.astype(dt), group_sizes)
  up = jax.lax.ragged_dot(xs, w_up.astype(dt), group_sizes)
  ys = jax.lax.ragged_dot(nn.silu(gate) * up, w_down.astype(dt), group_sizes)
  row_weight = jnp.where(is_local[order], weights.reshape(-1)[order], 0.0).astype(dt)
  ys = jnp.where(is_local[order][:, None], ys * row_weight[:, None], 0)
  return jnp.zeros_like(x).at[token].add(ys)


def capacity_experts(x, expert_ids, weights, w_gate, w_up, w_down, capacity_factor,
                     mesh=None, rules=sharding.DEFAULT_RULES):
  """Capacity-factor dispatch per sequence. x [B, S, d]; ids, weights [B, S, k].

  Returns (y [B, S, d], dropped fraction of assignments).
  """
  b, s, k = expert_ids.shape
  num_experts = w_gate.shape[0]
  capacity = max(1, math.ceil(capacity_factor * s * k / num_experts))
  onehot = jax.nn.one_hot(expert_ids, num_experts, dtype=jnp.int32)  # [B, S, k, E]
  # Priority: every token's first choice, then every second choice, ... (GShard).
  by_priority = onehot.transpose(0, 2, 1, 3).reshape(b, k * s, num_experts)
  position = jnp.sum((jnp.cumsum(by_priority, axis=1) - 1) * by_priority, axis=-1)
  position = position.reshape(b, k, s).transpose(0, 2, 1)  # [B, S, k]
  kept = position < capacity
  slot = jax.nn.one_hot(jnp.where(kept, position, capacity), capacity, dtype=x.dtype)  # dropped -> 0
  dispatch = jnp.einsum("bske,bskc->bsec", onehot.astype(x.dtype), slot)
  combine = jnp.einsum("bske,bskc,bsk->bsec", onehot.astype(x.dtype), slot,
                       weights.astype(x.dtype))
  dt = x.dtype
  expert_in = jnp.einsum("bsec,bsd->ebcd", dispatch, x)
  expert_in = sharding.constrain(expert_in, ("act_exp", "batch", None, "act_embed"), mesh, rules)
  gate = jnp.einsum("ebcd,edf->ebcf", expert_in, w_gate.astype(dt))
  up = jnp.einsum("ebcd,edf->ebcf", expert_in, w_up.astype(dt))
  expert_out = jnp.einsum("ebcf,efd->ebcd", nn.silu(gate) * up, w_down.astype(dt))
  expert_out = sharding.constrain(expert_out, ("act_exp", "batch", None, "act_embed"), mesh, rules)
  y = jnp.einsum("bsec,ebcd->bsd", combine, expert_out)
  return y, jnp.mean(jnp.logical_not(kept).astype(jnp.float32))


def expert_parallel_experts(x, expert_ids, weights, w_gate, w_up, w_down, mesh,
                            rules=sharding.DEFAULT_RULES):
  """Dropless experts under ``shard_map`` with experts sharded over ``expert`` (module docstring)."""
  ep = mesh.shape["expert"]
  num_experts = w_gate.shape[0]
  if num_experts % ep:
    raise ValueError(f"model.num_experts={num_experts} is not divisible by mesh.expert={ep}")
  e_local = num_experts // ep
  token_spec = sharding.mesh_spec(("batch", "seq", "act_embed"), x.shape, mesh, rules)
  batch_axes = sharding._as_tuple(token_spec[0])
  gathered = "expert" in batch_axes
  route_spec = P(token_spec[0], None, None)
  weight_spec = P("expert", None, None)

  def local(x, ids, w, wg, wu, wd):
    if gathered:
      x, ids, w = (jax.lax.all_gather(a, "expert", axis=0, tiled=True) for a in (x, ids, w))
    b, s, d = x.shape
    offset = jax.lax.axis_index("expert") * e_local
    y = dropless_experts(x.reshape(b * s, d), ids.reshape(b * s, -1), w.reshape(b * s, -1),
                         wg, wu, wd, expert_offset=offset).reshape(b, s, d)
    if gathered:
      return jax.lax.psum_scatter(y, "expert", scatter_dimension=0, tiled=True)
    return jax.lax.psum(y, "expert")

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(route_spec, route_spec, route_spec, weight_spec, weight_spec,
                                 weight_spec),
                       out_specs=route_spec)(x, expert_ids, weights, w_gate, w_up, w_down)


class Experts(nn.Module):
  """The E SwiGLU experts' weights: gate_proj, up_proj [E, d, f], down_proj [E, f, d]."""
  num_experts: int
  d_model: int
  hidden_dim: int
  init_std: float
  out_std: float
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self):
    e, d, f = self.num_experts, self.d_model, self.hidden_dim
    kernel = lambda shape, std, axes, name: layers.Kernel(shape, std, axes, self.param_dtype,
                                                          name=name)()
    return (kernel((e, d, f), self.init_std, ("exp", "embed", "mlp"), "gate_proj"),
            kernel((e, d, f), self.init_std, ("exp", "embed", "mlp"), "up_proj"),
            kernel((e, f, d), self.out_std, ("exp", "mlp", "embed"), "down_proj"))


class MoE(nn.Module):
  """Top-k routed SwiGLU experts. Returns (y [B, S, d], aux dict of float32 scalars)."""
  num_experts: int
  top_k: int
  hidden_dim: int
  capacity_factor: float
  aux_loss_coef: float
  z_loss_coef: float
  num_layers: int
  init_std: float
  out_std: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  mesh: object = None
  rules: tuple = sharding.DEFAULT_RULES

  @nn.compact
  def __call__(self, x):
    b, s, d = x.shape
    router = nn.Dense(self.num_experts, use_bias=False, dtype=jnp.float32,
                      param_dtype=self.param_dtype,
                      kernel_init=layers.normal_init(self.init_std, ("embed", None)), name="router")
    logits = router(x.astype(jnp.float32))  # router in float32 for stable top-k and losses
    expert_ids, weights = route(logits, self.top_k)
    w_gate, w_up, w_down = Experts(self.num_experts, d, self.hidden_dim, self.init_std,
                                   self.out_std, self.param_dtype, name="experts")()
    dropped = jnp.float32(0.0)
    if self.capacity_factor > 0:
      y, dropped = capacity_experts(x, expert_ids, weights, w_gate, w_up, w_down,
                                    self.capacity_factor, self.mesh, self.rules)
    elif self.mesh is not None and self.mesh.size > 1:
      # Also with expert=1: each device then sorts and runs only its own tokens
      # (a global argsort under GSPMD would gather every token).
      y = expert_parallel_experts(x, expert_ids, weights, w_gate, w_up, w_down, self.mesh,
                                  self.rules)
    else:
      y = dropless_experts(x.reshape(b * s, d), expert_ids.reshape(b * s, -1),
                           weights.reshape(b * s, -1), w_gate, w_up, w_down).reshape(b, s, d)
    load = jnp.mean(jax.nn.one_hot(expert_ids.reshape(-1), self.num_experts), axis=0)
    aux = dict(
        moe_aux_loss=self.aux_loss_coef / self.num_layers * load_balance_loss(logits, expert_ids),
        router_z_loss=self.z_loss_coef / self.num_layers * router_z_loss(logits),
        moe_max_load=self.num_experts * jnp.max(load),  # 1.0 = perfectly balanced
        moe_dropped_fraction=dropped,
    )
    return y, {key: jnp.asarray(v, jnp.float32) for key, v in aux.items()}
