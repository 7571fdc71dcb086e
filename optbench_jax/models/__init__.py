"""Llama and MoE language models (Flax Linen), their sharding, sizes, FLOPs and loss.

API (stable; the trainer codes against it). ``model_cfg`` is ``config.model``
(schema in ``optbench_jax/config.py``), a dict with those keys, or a ``ModelSpec``.

* ``build_model(model_cfg, mesh=None, rules=DEFAULT_RULES, report_max_logits=False)
  -> nn.Module``:
  ``module.apply({'params': params}, tokens int32 [B, S]) -> (logits float32
  [B, S, V], aux)``. ``aux`` is a dict of float32 scalars: ``moe_aux_loss`` and
  ``router_z_loss`` (coefficient x layer-mean; 0.0 for dense; add both to the
  loss) and, for MoE, diagnostics ``moe_max_load`` (E x the largest expert
  share, layer-mean; 1.0 = balanced) and ``moe_dropped_fraction`` (capacity
  path; 0.0 when dropless). With a mesh, activations are constrained by the
  logical rules and MoE uses expert parallelism when ``mesh.shape['expert'] >
  1``; nothing needs to wrap ``apply`` (no rules context).
  ``report_max_logits=True`` adds ``aux['attn_max_logits']`` float32 [L, H],
  the largest pre-softmax attention logit per layer and head (QK-clip).
  ``report_activations=True`` sows the coordinate check's activations into the
  ``intermediates`` collection (``llama.LanguageModel``).
  Compute in ``compute_dtype``, params ``param_dtype``, RMSNorm and router in
  float32, logits float32.
* ``init_params(model_cfg, rng) -> params``: plain (unboxed) pytree.
  Under ``jax.jit(init_params, static_argnums=0, out_shardings=
  param_shardings(...))`` the parameters are created sharded.
* ``abstract_params(model_cfg)``: pytree of ``jax.ShapeDtypeStruct`` (eval_shape).
* ``logical_axes(model_cfg)``: pytree of ``PartitionSpec`` of logical axis names.
* ``param_batch_axes(params)``: pytree of ints, the leading batch axes
  (``layers``: 1; ``layers/.../experts``: 2; everything else 0).
* ``parametrization``: ``model.parametrization`` (standard | mup | completep):
  ``multipliers(spec)``, and ``width_scaling`` / ``roles`` / ``width_ratios
  (model_cfg)``, pytrees of each parameter's role (hidden | embedding | output |
  vector) and fan-in width ratio base_width / fan_in, for optimizer scaling rules.
* ``count_params(model_cfg) -> dict(total, non_embedding, embedding, active)``.
  ``embedding`` = token embedding + untied LM head; ``active`` = total with
  only top_k of num_experts experts per MoE layer.
* ``sharding``: ``DEFAULT_RULES``, ``make_mesh``, ``param_shardings``,
  ``batch_sharding``, ``mesh_spec``, ``rules_context``.
* ``flops.flops_per_token(model_cfg, seq_len)``; ``losses.lm_loss(logits,
  targets, mask=None, z_loss=0.0) -> (loss, metrics)``.

Parameter tree (kernels (fan_in, fan_out); stacked leading axis L):
``{'embed': {'embedding': (V, d)}, 'layers': {'attn_norm': {'scale': (L, d)},
'attn': {'q_proj': {'kernel': (L, d, H hd)}, 'k_proj', 'v_proj': (L, d, Hkv hd),
'o_proj': (L, H hd, d)}, 'mlp_norm': {'scale'}, 'mlp': {'gate_proj', 'up_proj':
{'kernel': (L, d, f)}, 'down_proj': {'kernel': (L, f, d)}}}, 'final_norm':
{'scale': (d,)}, 'lm_head': {'kernel': (d, V)} (untied only)}``; MoE layers have
``'moe': {'router': {'kernel': (L, d, E)}, 'experts': {'gate_proj', 'up_proj':
{'kernel': (L, E, d, f)}, 'down_proj': {'kernel': (L, E, f, d)}}}`` instead of
``'mlp'``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax

from optbench_jax.models import flops, losses, parametrization, sharding
from optbench_jax.optim import labels
from optbench_jax.models.llama import LanguageModel
from optbench_jax.models.spec import ModelSpec

__all__ = ["ModelSpec", "LanguageModel", "build_model", "init_params", "abstract_params",
           "logical_axes", "param_batch_axes", "count_params", "flops", "losses", "parametrization",
           "sharding"]


def build_model(model_cfg: Any, mesh: jax.sharding.Mesh | None = None,
                rules=sharding.DEFAULT_RULES, report_max_logits: bool = False,
                report_activations: bool = False) -> LanguageModel:
  """The Flax module for ``model_cfg`` (validated; raises ValueError naming a bad key)."""
  return LanguageModel(ModelSpec.from_config(model_cfg), mesh=mesh, rules=tuple(rules),
                       report_max_logits=report_max_logits,
                       report_activations=report_activations)



def _boxed_init(spec: ModelSpec, rng):
  # The parameters do not depend on the attention kernel, and a fused kernel may
  # refuse the 8-token init batch (splash needs multiples of 128).
  model = LanguageModel(dataclasses.replace(spec, attention_impl="xla"))
  return model.init(rng, jax.numpy.zeros((1, 8), jax.numpy.int32))["params"]


def init_params(model_cfg: Any, rng: jax.Array) -> Any:
  """Freshly initialised parameters as a plain pytree of arrays."""
  return _jitted_init(ModelSpec.from_config(model_cfg))(rng)


@functools.lru_cache(maxsize=16)
def _jitted_init(spec: ModelSpec):
  # Jitted (one compile per spec) rather than op by op; nests inside a caller's jit.
  return jax.jit(lambda rng: nn.unbox(_boxed_init(spec, rng)))


@functools.lru_cache(maxsize=64)
def _abstract_boxed(spec: ModelSpec):
  return jax.eval_shape(functools.partial(_boxed_init, spec), jax.random.key(0))


def abstract_params(model_cfg: Any) -> Any:
  """Shapes and dtypes of the parameters (``jax.eval_shape``: nothing allocated)."""
  return nn.unbox(_abstract_boxed(ModelSpec.from_config(model_cfg)))


def logical_axes(model_cfg: Any) -> Any:
  """PartitionSpecs of logical axis names, matching the parameter tree."""
  return nn.get_partition_spec(_abstract_boxed(ModelSpec.from_config(model_cfg)))


def param_batch_axes(params: Any) -> Any:
  """Leading batch axes per leaf: 1 under 'layers', 2 under 'layers/.../experts', else 0."""
  def axes(path, _):
    keys = labels.path_keys(path)
    if "layers" not in keys:
      return 0
    return 2 if "experts" in keys else 1
  return jax.tree_util.tree_map_with_path(axes, params)


def count_params(model_cfg: Any) -> dict[str, int]:
  """Parameter counts from shapes only: total, embedding, non_embedding, active.

  ``embedding`` counts the token embedding and an untied LM head (Kaplan et al.
  2020's N excludes both; Wen et al. 2025's sizes are non-embedding counts).
  ``active`` replaces each MoE layer's E experts by top_k of them; it equals
  ``total`` for dense models.
  """
  spec = ModelSpec.from_config(model_cfg)
  shapes = abstract_params(spec)
  total = embedding = experts = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    keys = labels.path_keys(path)
    n = math.prod(leaf.shape)
    total += n
    if keys[0] in ("embed", "lm_head"):
      embedding += n
    if "experts" in keys:
      experts += n
  active = total
  if spec.kind == "moe":
    active = total - experts + experts * spec.experts_top_k // spec.num_experts
  return dict(total=total, non_embedding=total - embedding, embedding=embedding, active=active)
