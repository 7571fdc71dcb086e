"""Parametrizations: how initialisation and forward multipliers scale with width and depth.

``model.parametrization`` picks one of three; ``multipliers(spec)`` gives the
numbers the model uses, ``width_scaling(spec)`` the per-parameter role and width
ratios an optimizer's learning-rate rules build on. Notation: ``d`` = d_model,
``L`` = num_layers, ``m_w = d / base_width`` (width multiplier), ``m_L = L /
base_depth`` (depth multiplier), ``sigma`` = ``init_std``, ``hd`` = head dim.

* ``standard`` (the default; GPT-2 / Llama): hidden matrices N(0, sigma^2), the
  projections writing into the residual stream (o_proj, down_proj) sigma /
  sqrt(2 L), embedding and untied head N(0, sigma^2); attention scores q.k /
  sqrt(hd); no multipliers. Nothing here changes that model: every multiplier
  is 1.0 and the model skips a multiplication by 1.0 (bit-for-bit, tested).
* ``mup``, Maximal Update Parametrization (Yang & Hu et al. 2021, Tensor
  Programs V, arXiv 2203.03466, Table 3, with the output multiplier instead of
  a zero readout), for Adam-type optimizers:
    hidden matrices      N(0, sigma^2 / m_w)           (variance ~ 1 / fan_in)
    residual projections N(0, sigma^2 / (2 L m_w))
    embedding            N(0, sigma^2),  output  x  alpha_emb
    attention scores     q.k / hd                       (not / sqrt(hd))
    logits               (h W_head)  x  alpha_out / m_w
  ``alpha_emb`` = ``model.mup_embedding_multiplier`` (10, the reference
  benchmark's ``scale_emb``, epfml/llm-optimizer-benchmark mup_llama.py) and
  ``alpha_out`` = ``model.mup_output_multiplier`` (1). The embedding and an
  untied head keep sigma: with the 1 / m_w logit multiplier a tied embedding is
  both, as in µP's shared readout. At d = base_width, µP differs from standard
  only by alpha_emb and the 1 / hd attention.
* ``completep`` (Dey et al. 2025, arXiv 2505.01618; alpha = 1 of their depth
  parametrization; Qiu et al., arXiv 2512.05620, use the same 1 / L): µP in
  width, and every residual branch multiplied by 1 / m_L = base_depth / L:
    x <- x + (base_depth / L) Attn(RMSNorm(x)),   x <- x + (base_depth / L) MLP(RMSNorm(x))
  The residual projections take the depth-independent std sigma / sqrt(2
  base_depth m_w), so the 1 / m_L multiplier alone carries the depth scaling
  and completep equals mup at L = base_depth.

The learning-rate (and Adam epsilon / weight-decay) halves of these
parametrizations are optimizer rules, not model settings: they build on
``width_scaling``. Deviation: the MoE router (fan-out E, fixed) is treated as
a hidden matrix (init sigma / sqrt(m_w)); strict µP would treat a fixed
fan-out matrix as a readout and shrink its output further.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from optbench_jax.models import layers as layers_lib
from optbench_jax.optim import labels
from optbench_jax.optim import width_rules

PARAMETRIZATIONS = ("standard", "mup", "completep")

# Logical axes (layers.py) whose size grows with d_model; the others (vocab,
# exp, layers) are fixed as the model widens. ffn_dim is taken as ~ d_model.
WIDTH_AXES = ("embed", "mlp", "heads", "kv_heads")

# The roles the optimizers' scaling rules tell apart (optim/width_rules.py owns them).
HIDDEN, EMBEDDING, OUTPUT, VECTOR = (width_rules.HIDDEN, width_rules.EMBEDDING,
                                     width_rules.OUTPUT, width_rules.VECTOR)
ROLES = (HIDDEN, EMBEDDING, OUTPUT, VECTOR)
# Residual-branch exponent alpha (branch x m_L^-alpha) of each parametrization.
DEPTH_ALPHA = {"standard": 0.0, "mup": 0.0, "completep": 1.0}


@dataclasses.dataclass(frozen=True)
class Multipliers:
  """The numbers the model multiplies by; all 1.0 / the standard stds under ``standard``."""
  hidden_std: float          # q, k, v, gate, up, router, experts' gate / up
  residual_std: float        # o_proj, down_proj (also the experts')
  embedding: float           # embedding output
  output: float              # logits
  query: float               # q after RoPE: the attention's 1/sqrt(hd) becomes query/sqrt(hd)
  residual_branch: float     # each branch before it joins the residual stream


def width_multiplier(spec) -> float:
  """m_w = d_model / base_width."""
  return spec.d_model / spec.base_width


def depth_multiplier(spec) -> float:
  """m_L = num_layers / base_depth."""
  return spec.num_layers / spec.base_depth


def multipliers(spec) -> Multipliers:
  """The multipliers of ``spec.parametrization`` (module docstring)."""
  sigma, layers = spec.init_std, spec.num_layers
  if spec.parametrization == "standard":
    return Multipliers(hidden_std=sigma, residual_std=layers_lib.residual_std(sigma, layers),
                       embedding=1.0, output=1.0, query=1.0, residual_branch=1.0)
  m_w = width_multiplier(spec)
  hidden_std = sigma / math.sqrt(m_w)
  query = 1.0 / math.sqrt(spec.head_dim)   # q.k / sqrt(hd) -> q.k / hd
  branch, std_depth = 1.0, layers
  if spec.parametrization == "completep":
    branch, std_depth = spec.base_depth / layers, spec.base_depth
  return Multipliers(hidden_std=hidden_std,
                     residual_std=layers_lib.residual_std(hidden_std, std_depth),
                     embedding=float(spec.mup_embedding_multiplier),
                     output=float(spec.mup_output_multiplier) / m_w, query=query,
                     residual_branch=branch)


@dataclasses.dataclass(frozen=True)
class WidthScaling:
  """One parameter's role and how its fan-in / fan-out changed from the base width.

  ``fan_in_ratio`` = fan_in at base_width / fan_in (base_width / d_model when the
  fan-in grows with width, else 1), ``fan_out_ratio`` likewise. µP's Adam rules
  scale a hidden matrix's learning rate by ``fan_in_ratio`` (Tensor Programs V,
  Table 3) and keep the embedding's and, with the 1 / m_w logit multiplier here,
  the output layer's; SGD rules also need ``fan_out_ratio``. A pytree leaf.
  """
  role: str                  # hidden | embedding | output | vector
  fan_in_ratio: float
  fan_out_ratio: float


def _role(keys: tuple[str, ...], matrix_axes: tuple) -> str:
  if keys[0] == "embed":
    return EMBEDDING          # with tied embeddings also the output layer
  if keys[0] == "lm_head":
    return OUTPUT
  return HIDDEN if len(matrix_axes) >= 2 else VECTOR


def width_scaling(model_cfg: Any) -> Any:
  """Pytree of :class:`WidthScaling` matching ``abstract_params(model_cfg)``.

  Read from the parameters' logical axes: the last two non-batch axes are
  (fan_in, fan_out), and an axis in ``WIDTH_AXES`` grew by m_w from base_width.
  Leading ``layers`` / ``exp`` axes are batch axes (one matrix per layer / expert).
  """
  from optbench_jax import models   # pylint: disable=import-outside-toplevel  (models imports us)
  spec = models.ModelSpec.from_config(model_cfg)
  ratio = 1.0 / width_multiplier(spec)
  axes_tree = models.logical_axes(spec)

  def scaling(path, axes):
    names = tuple(a for a in axes if a not in ("layers", "exp"))
    role = _role(labels.path_keys(path), names)
    if role == VECTOR:
      return WidthScaling(role, 1.0, ratio if names and names[0] in WIDTH_AXES else 1.0)
    fan_in, fan_out = names[-2:]
    return WidthScaling(role, ratio if fan_in in WIDTH_AXES else 1.0,
                        ratio if fan_out in WIDTH_AXES else 1.0)

  return jax.tree_util.tree_map_with_path(
      scaling, axes_tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def roles(model_cfg: Any) -> Any:
  """Pytree of role strings (hidden | embedding | output | vector) matching the parameters."""
  return jax.tree.map(lambda s: s.role, width_scaling(model_cfg),
                      is_leaf=lambda x: isinstance(x, WidthScaling))


def width_ratios(model_cfg: Any) -> Any:
  """Pytree of fan-in ratios base_width / fan_in-ish (1.0 where the fan-in is fixed)."""
  return jax.tree.map(lambda s: s.fan_in_ratio, width_scaling(model_cfg),
                      is_leaf=lambda x: isinstance(x, WidthScaling))


def geometry(model_cfg: Any) -> Any:
  """Pytree of ``width_rules.Geometry`` matching ``abstract_params(model_cfg)``.

  Each matrix's (fan_in, fan_out) now and at the base width (batch axes removed,
  leading dims flattened as the matrix optimizers do), its role, and the width
  and depth multipliers the optimizers' scaling rules read.
  """
  from optbench_jax import models   # pylint: disable=import-outside-toplevel  (models imports us)
  spec = models.ModelSpec.from_config(model_cfg)
  m_w, m_l = width_multiplier(spec), depth_multiplier(spec)
  alpha = DEPTH_ALPHA[spec.parametrization]
  shapes = models.abstract_params(spec)
  axes_tree = models.logical_axes(spec)
  scaling_tree = width_scaling(model_cfg)

  def leaf(path, shape, axes, scaling):
    kept = [(size, name) for size, name in zip(shape.shape, axes) if name not in ("layers", "exp")]
    in_block = labels.path_keys(path)[0] == "layers"
    if scaling.role == VECTOR or len(kept) < 2:
      size = math.prod(s for s, _ in kept) if kept else 1
      return width_rules.Geometry(scaling.role, size, size, size, size, m_w, m_l, alpha, in_block)
    fan_in = math.prod(s for s, _ in kept[:-1])
    fan_out = kept[-1][0]
    return width_rules.Geometry(
        scaling.role, fan_in, fan_out, round(fan_in * scaling.fan_in_ratio),
        round(fan_out * scaling.fan_out_ratio), m_w, m_l, alpha, in_block)

  flat_axes = jax.tree.leaves(axes_tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_scaling = jax.tree.leaves(scaling_tree, is_leaf=lambda x: isinstance(x, WidthScaling))
  paths_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  return jax.tree.unflatten(treedef, [leaf(path, shape, tuple(axes), scaling)
                                      for (path, shape), axes, scaling
                                      in zip(paths_shapes, flat_axes, flat_scaling)])
