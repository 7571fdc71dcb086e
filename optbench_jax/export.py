"""A trained model as a Hugging Face checkpoint that ``transformers`` loads with no custom code.

    python -m optbench_jax.export --workdir=W [--step=N] --out=DIR
        [--dtype=float32|bfloat16|float16] [--tokenizer=auto|gpt2|none]

writes ``DIR/config.json`` and ``DIR/model.safetensors`` (parameters only, in
``--dtype``, float32 by default) that ``AutoModelForCausalLM.from_pretrained(DIR)``
loads as

* ``LlamaForCausalLM`` for ``model.kind='llama'``;
* ``MixtralForCausalLM`` for ``model.kind='moe'``. Mixtral's router is ours
  exactly: bias-free router logits, top-k experts, combine weights
  ``softmax(all logits)`` restricted to the top k and renormalised, which is
  ``softmax(top-k logits)``, our ``moe.route``; SwiGLU experts (w1 = gate,
  w3 = up, w2 = down); no shared experts, no token dropping; the auxiliary
  losses only matter in training. Qwen2-MoE always adds a gated shared expert,
  Qwen3-MoE and OLMoE add QK-norm, DeepSeek adds shared experts and grouped
  routing: none of them reproduces this MoE. The weights are written with the
  per-expert names of the published Mixtral checkpoints
  (``block_sparse_moe.experts.{e}.w1``), which transformers 4 reads as they
  are and transformers 5 fuses on load.

With ``--tokenizer=gpt2`` (``auto``: when the run trained on a prepared
corpus, ``data.source='shards'``, which is GPT-2 BPE) it also writes GPT-2's
tokenizer files (``data.hf_tokenizer``), so ``AutoTokenizer.from_pretrained(DIR)``
works offline. A synthetic-corpus run has no text tokenizer.

Layout: our kernels are ``(fan_in, fan_out)``, Hugging Face's Linear weights
``[out, in]``, so every kernel is transposed. RoPE needs no permutation: ours
is already Llama's rotate-half layout (``models.attention``). The vocabulary is
exported padded (``config.vocab_size`` = the embedding's rows; the padding
rows are never produced by the tokenizer). A tied head writes no
``lm_head.weight`` (``tie_word_embeddings``). RMSNorm eps, rope theta and
the head size are copied.

Refused, with one line (:class:`ExportError`): any model setting no
transformers class reproduces exactly. Every ``ModelSpec`` field is listed
below as mapped or as training-only; ``capacity_factor > 0`` (capacity-based
token dropping) is refused, and a field this module does not know (a new
architecture feature: QK-norm, biases, another activation or RoPE variant)
is refused unless it has its default value. The exporter needs only numpy,
json and ``safetensors``; ``transformers`` is needed to load the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import jax
import ml_dtypes
import numpy as np

from optbench_jax import inference
from optbench_jax import models
from optbench_jax.data import hf_tokenizer
from optbench_jax.data import tokenizer as tokenizer_lib

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# ModelSpec fields copied into the Hugging Face config.
MAPPED = ("kind", "num_layers", "d_model", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size",
          "tie_embeddings", "rope_theta", "norm_eps", "init_std", "num_experts", "experts_top_k",
          "moe_aux_loss_coef")
# Fields that change how training computes or stores, never what the trained model computes
# (a model trained in bfloat16 computes in whatever dtype transformers is asked for).
TRAINING_ONLY = ("z_loss", "scan_layers", "remat", "attention_impl", "compute_dtype",
                 "param_dtype", "moe_z_loss_coef")
# Fields exported only at the value Hugging Face's classes reproduce, and why.
REQUIRED = {"capacity_factor": (0.0, "capacity-based token dropping: no transformers MoE class "
                                     "drops tokens (train dropless, capacity_factor=0)"),
            "parametrization": ("standard", "the muP / CompleteP multipliers (embedding, "
                                "attention 1/d_head, residual, logits) have no Llama or Mixtral "
                                "config field")}
# Fields that act only under a parametrization other than "standard" (refused above).
PARAMETRIZATION_ONLY = ("base_width", "base_depth", "mup_embedding_multiplier",
                        "mup_output_multiplier")
TOKENIZERS = ("auto", "gpt2", "none")


class ExportError(ValueError):
  """The model cannot be exported exactly; one line."""


def check_exportable(spec: models.ModelSpec) -> None:
  """Raises ExportError naming the first model setting no transformers class reproduces."""
  defaults = models.ModelSpec()
  for field in dataclasses.fields(spec):
    name, value = field.name, getattr(spec, field.name)
    if name in MAPPED or name in TRAINING_ONLY or name in PARAMETRIZATION_ONLY:
      continue
    if name in REQUIRED:
      required, why = REQUIRED[name]
      if value != required:
        raise ExportError(f"model.{name}={value!r} cannot be exported: {why}")
    elif value != getattr(defaults, name):
      raise ExportError(f"model.{name}={value!r} cannot be exported: the exporter maps no "
                        f"transformers feature to it (optbench_jax/export.py)")


def architecture(spec: models.ModelSpec) -> str:
  return "MixtralForCausalLM" if spec.kind == "moe" else "LlamaForCausalLM"


def hf_config(spec: models.ModelSpec, max_positions: int, dtype: str,
              gpt2_tokens: bool) -> dict[str, Any]:
  """The ``config.json`` of ``spec`` (Llama, or Mixtral for MoE)."""
  eot = tokenizer_lib.GPT2_EOT_ID if gpt2_tokens else None
  config = dict(
      architectures=[architecture(spec)], model_type="mixtral" if spec.kind == "moe" else "llama",
      vocab_size=spec.vocab_size, hidden_size=spec.d_model, intermediate_size=spec.ffn_dim,
      num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
      num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, hidden_act="silu",
      max_position_embeddings=max_positions, initializer_range=spec.init_std,
      rms_norm_eps=spec.norm_eps, tie_word_embeddings=spec.tie_embeddings,
      # rope_theta for transformers 4, rope_parameters for 5 (which also reads rope_theta).
      rope_theta=spec.rope_theta, rope_scaling=None,
      rope_parameters=dict(rope_type="default", rope_theta=spec.rope_theta),
      attention_bias=False, attention_dropout=0.0, bos_token_id=eot, eos_token_id=eot,
      use_cache=True, torch_dtype=dtype)
  if spec.kind == "moe":
    config.update(num_local_experts=spec.num_experts, num_experts_per_tok=spec.experts_top_k,
                  sliding_window=None, router_jitter_noise=0.0, output_router_logits=False,
                  router_aux_loss_coef=spec.moe_aux_loss_coef)
  else:
    config.update(mlp_bias=False, pretraining_tp=1)
  return config


def hf_weights(spec: models.ModelSpec, params: Any, dtype: str) -> dict[str, np.ndarray]:
  """Hugging Face parameter names -> arrays in ``dtype`` (Linear weights [out, in])."""
  host = jax.device_get(params)
  cast = lambda a: np.ascontiguousarray(np.asarray(a, np.float32).astype(DTYPES[dtype]))
  linear = lambda kernel: cast(np.swapaxes(np.asarray(kernel), -1, -2))
  layers = host["layers"]
  out = {"model.embed_tokens.weight": cast(host["embed"]["embedding"]),
         "model.norm.weight": cast(host["final_norm"]["scale"])}
  if not spec.tie_embeddings:
    out["lm_head.weight"] = linear(host["lm_head"]["kernel"])
  for i in range(spec.num_layers):
    prefix = f"model.layers.{i}."
    out[prefix + "input_layernorm.weight"] = cast(layers["attn_norm"]["scale"][i])
    out[prefix + "post_attention_layernorm.weight"] = cast(layers["mlp_norm"]["scale"][i])
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
      out[prefix + f"self_attn.{name}.weight"] = linear(layers["attn"][name]["kernel"][i])
    if spec.kind == "moe":
      moe = layers["moe"]
      out[prefix + "block_sparse_moe.gate.weight"] = linear(moe["router"]["kernel"][i])
      for e in range(spec.num_experts):
        for ours, theirs in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
          out[prefix + f"block_sparse_moe.experts.{e}.{theirs}.weight"] = linear(
              moe["experts"][ours]["kernel"][i, e])
    else:
      for name in ("gate_proj", "up_proj", "down_proj"):
        out[prefix + f"mlp.{name}.weight"] = linear(layers["mlp"][name]["kernel"][i])
  return out


def _wants_gpt2(model: inference.Model, tokenizer: str) -> bool:
  if tokenizer == "none" or (tokenizer == "auto" and model.config.data.source != "shards"):
    return False
  if model.vocab_size < tokenizer_lib.GPT2_VOCAB_SIZE:
    raise ExportError(f"--tokenizer=gpt2: the model's vocabulary ({model.vocab_size}) is smaller "
                      f"than GPT-2's ({tokenizer_lib.GPT2_VOCAB_SIZE}); it was not trained on "
                      f"GPT-2 tokens (use --tokenizer=none)")
  return True


def export(workdir: str, out: str, step: int | None = None, dtype: str = "float32",
           tokenizer: str = "auto") -> list[str]:
  """Writes the Hugging Face checkpoint of ``workdir``'s ``step`` into ``out``; returns the
  names of the files written. Raises ExportError / ModelLoadError (one line)."""
  if dtype not in DTYPES:
    raise ExportError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
  if tokenizer not in TOKENIZERS:
    raise ExportError(f"--tokenizer must be one of {list(TOKENIZERS)}, got {tokenizer!r}")
  model = inference.load(workdir, step, devices=jax.local_devices()[:1])
  check_exportable(model.spec)
  gpt2 = _wants_gpt2(model, tokenizer)
  written = write_model(model.spec, model.params, out, model.config.data.seq_len, dtype, gpt2)
  if gpt2:
    written += hf_tokenizer.write_gpt2_files(out)
  return written


def write_model(spec: models.ModelSpec, params: Any, out: str, max_positions: int,
                dtype: str = "float32", gpt2_tokens: bool = False) -> list[str]:
  """Writes ``config.json`` and ``model.safetensors`` of ``params`` into ``out``."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel  (the extra)
  check_exportable(spec)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config(spec, max_positions, dtype, gpt2_tokens), f, indent=1)
  save_file(hf_weights(spec, params, dtype), os.path.join(out, "model.safetensors"),
            metadata={"format": "pt"})
  return ["config.json", "model.safetensors"]


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m optbench_jax.export",
                              description=__doc__.split("\n\n", maxsplit=1)[0])
  p.add_argument("--workdir", required=True, help="the training run's work directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--out", required=True, help="output directory (local)")
  p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
  p.add_argument("--tokenizer", default="auto", choices=TOKENIZERS,
                 help="auto: GPT-2 files when the run trained on a prepared corpus")
  p.add_argument("--verbose", action="store_true", help="print tracebacks with errors")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  written = export(args.workdir, args.out, args.step, args.dtype, args.tokenizer)
  print(f"wrote {args.out}: {', '.join(written)}")
  return 0


if __name__ == "__main__":
  from optbench_jax import cli_errors  # pylint: disable=import-outside-toplevel
  sys.exit(cli_errors.run(main))
