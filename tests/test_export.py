"""optbench_jax.export: transformers loads the exported runs and computes our logits."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from optbench_jax import export
from optbench_jax import inference
from optbench_jax import models
from tests import tiny_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = {"llama": "LlamaForCausalLM", "moe": "MixtralForCausalLM"}


@pytest.fixture(scope="module", params=sorted(CLASSES))
def run(request, tmp_path_factory):
  return request.param, tiny_runs.trained(tmp_path_factory, request.param)


def hf_logits(directory: str, tokens: np.ndarray, kind: str) -> np.ndarray:
  model, info = transformers.AutoModelForCausalLM.from_pretrained(directory,
                                                                  output_loading_info=True)
  assert type(model).__name__ == CLASSES[kind]
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def test_transformers_computes_our_logits(run, tmp_path):
  kind, workdir = run
  written = export.export(workdir, str(tmp_path))
  assert written == ["config.json", "model.safetensors"]   # synthetic corpus: no tokenizer
  names = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  assert "lm_head.weight" not in names   # tied: the head is the embedding
  tokens = np.random.RandomState(0).randint(0, 128, (3, 16))
  ours = inference.load(workdir).logits(tokens)
  theirs = hf_logits(str(tmp_path), tokens, kind)
  assert np.abs(theirs - ours).max() < 1e-4


def test_the_step_and_the_dtype_are_chosen(run, tmp_path):
  kind, workdir = run
  export.export(workdir, str(tmp_path), step=2, dtype="bfloat16")
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["torch_dtype"] == "bfloat16" and config["vocab_size"] == 128
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
  assert model.model.embed_tokens.weight.dtype == torch.bfloat16
  tokens = np.random.RandomState(1).randint(0, 128, (2, 16))
  ours = inference.load(workdir, step=2).logits(tokens)
  with torch.no_grad():
    theirs = model(torch.tensor(tokens)).logits.float().numpy()
  assert np.abs(theirs - ours).max() < 0.1   # bfloat16 weights and activations


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_layout_of_every_setting_that_is_mapped(kind, tmp_path):
  """Random parameters of 2 layers, grouped-query heads, an untied head, another RoPE theta,
  RMSNorm eps and head size: transformers computes the same logits."""
  spec = models.ModelSpec.from_config(dict(
      kind=kind, num_layers=2, d_model=48, num_heads=4, num_kv_heads=2, ffn_dim=40,
      vocab_size=96, tie_embeddings=False, rope_theta=500.0, norm_eps=1e-3, init_std=0.2,
      num_experts=3 if kind == "moe" else 0, experts_top_k=2))
  params = models.init_params(spec, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        params)   # norms away from 1
  export.write_model(spec, params, str(tmp_path), max_positions=32)
  weights = export.hf_weights(spec, params, "float32")
  np.testing.assert_array_equal(weights["lm_head.weight"],
                                np.asarray(params["lm_head"]["kernel"]).T)
  tokens = np.random.RandomState(2).randint(0, 96, (2, 32))
  ours = np.asarray(models.build_model(spec).apply({"params": params}, tokens)[0])
  assert np.abs(hf_logits(str(tmp_path), tokens, kind) - ours).max() < 1e-4


def test_every_model_setting_is_classified():
  """A new ModelSpec field is refused unless it keeps its default (it may change the math)."""
  fields = {f.name for f in dataclasses.fields(models.ModelSpec)}
  assert fields == (set(export.MAPPED) | set(export.TRAINING_ONLY) | set(export.REQUIRED)
                    | set(export.PARAMETRIZATION_ONLY))
  spec = models.ModelSpec.from_config(dict(kind="moe", num_experts=4, capacity_factor=1.25))
  with pytest.raises(export.ExportError, match="capacity_factor=1.25 cannot be exported"):
    export.check_exportable(spec)
  mup = models.ModelSpec.from_config(dict(parametrization="mup"))
  with pytest.raises(export.ExportError, match="parametrization='mup' cannot be exported"):
    export.check_exportable(mup)
  # Under the standard parametrization its settings change nothing: exported as they are.
  export.check_exportable(models.ModelSpec.from_config(dict(base_width=64)))


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "optbench_jax.export", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_unsupported_config_is_refused_with_one_line(tmp_path_factory, tmp_path):
  """A capacity-factor MoE (tokens dropped over capacity) has no transformers class."""
  workdir = tmp_path / "capacity"
  shutil.copytree(tiny_runs.trained(tmp_path_factory, "moe"), workdir)
  record = json.loads((workdir / "run_record.json").read_text())
  record["config"]["model"]["capacity_factor"] = 1.25
  (workdir / "run_record.json").write_text(json.dumps(record))
  result = _cli(f"--workdir={workdir}", f"--out={tmp_path / 'hf'}")
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [result.stderr.strip().splitlines()[-1]] and len(errors) == 1, result.stderr
  assert "model.capacity_factor=1.25 cannot be exported" in errors[0]
  assert not (tmp_path / "hf").exists()


def test_command_line(tmp_path_factory, tmp_path):
  workdir = tiny_runs.trained(tmp_path_factory, "llama")
  result = _cli(f"--workdir={workdir}", f"--out={tmp_path}", "--dtype=float16", "--step=2")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == f"wrote {tmp_path}: config.json, model.safetensors"
  assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "float16"


def test_missing_step_is_one_line(tmp_path_factory, tmp_path):
  workdir = tiny_runs.trained(tmp_path_factory, "llama")
  result = _cli(f"--workdir={workdir}", "--step=9", f"--out={tmp_path}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {workdir} has no checkpoint at step 9; it has steps 2, 3")


def test_gpt2_tokenizer_needs_a_gpt2_vocabulary(tmp_path_factory, tmp_path):
  workdir = tiny_runs.trained(tmp_path_factory, "llama")
  with pytest.raises(export.ExportError, match=r"vocabulary \(128\) is smaller than GPT-2's"):
    export.export(workdir, str(tmp_path), tokenizer="gpt2")
