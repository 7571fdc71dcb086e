"""Coordinate check: µP is flat across 8x width and CompleteP across 4x depth, where the
standard parametrization grows; the command's files and its one-line errors.

Micro models (2 layers, d = 32..256; or d = 32, 1..4 layers; 16 x 16 tokens), AdamW at a
constant 3e-3 for 5 steps. Bands measured (BUILD_NOTES part 2), stated at each assert.
"""

import json
import os

import numpy as np
import pytest

from optbench_jax import cli_errors
from optbench_jax import config as config_lib
from optbench_jax.bench import coord_check as C
from tests.train import tiny

STEPS = 5
WIDTHS = (32, 64, 256)      # 8x
# At d = base_width (m_w = 1); the layers as a loop, so one compile's cost whatever the depth;
# embedding multiplier 1, so the embedding (10x: RMS 0.2) does not hide the blocks' share of
# the residual stream (RMS 0.03).
DEPTH_MODEL = dict(d_model=32, ffn_dim=128, base_depth=1, scan_layers=True,
                   mup_embedding_multiplier=1.0)
DEPTHS = (1, 2, 4)          # 4x


def micro(data_dir, parametrization: str, **model):
  c = tiny.micro_config(data_dir, steps=STEPS)
  c.model.update(dict(dict(num_layers=2, d_model=64, num_heads=4, ffn_dim=256, base_width=32,
                           base_depth=2, parametrization=parametrization), **model))
  c.optimizer.schedule.update(name="constant", warmup_steps=0)
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


def check(config, sizes, axis="widths", tmp=None):
  return C.coord_check(config, sizes, STEPS, str(tmp), axis, devices=tiny.one_device(),
                       log=lambda _: None)


def last(result, table, kind):
  return [series[-1] for series in result[table][kind].values()]


def test_mup_with_adam_is_flat_across_8x_width(data_dir, tmp_path):
  """µP with AdamW's own scaling rule (hidden rates x base_width / fan_in, applied by the
  trainer's optimizer under lr_scaling="auto"): every kind's activation RMS and
  its change since init within 2x across 8x width at the last step (measured <= 1.47: the
  attention output from d=32 to 64, and the logits, whose init share shrinks as 1/sqrt(m_w));
  a sqrt(width) growth would be 2.8x."""
  result = check(micro(data_dir, "mup"), WIDTHS, tmp=tmp_path)
  assert result["lr_scaling"] == "elementwise:mup"
  for table in ("activation_rms", "update_rms"):
    for kind in C.KINDS:
      assert C.spread(result, table, kind) < 2, (table, kind, last(result, table, kind))


def test_mup_with_muon_is_flat_under_its_spectral_rule_and_not_under_rms_matching(
    data_dir, tmp_path):
  """Muon's spectral rule (per-matrix rate x sqrt(fan_out/fan_in) / Muon's own shape scale,
  relative to the base width): every kind within 1.5x across 8x width (measured <= 1.31, the
  MLP output). Moonlight's RMS matching with AdamW's 1/fan_in carried over shrinks the hidden
  steps as 1/sqrt(m_w): the MLP output moves > 2x (measured 2.9x; sqrt(8) = 2.8)."""
  config = micro(data_dir, "mup")
  config.optimizer.update(name="muon", learning_rate=0.02)
  spectral = check(config, WIDTHS, tmp=tmp_path)
  assert spectral["lr_scaling"] == "muon:spectral"
  for table in ("activation_rms", "update_rms"):
    for kind in C.KINDS:
      assert C.spread(spectral, table, kind) < 1.5, (table, kind, last(spectral, table, kind))
  config.optimizer.lr_scaling = "rms_match"
  matched = check(config, WIDTHS, tmp=tmp_path)
  mlp = last(matched, "update_rms", "mlp_output")
  assert np.all(np.diff(mlp) < 0) and mlp[0] / mlp[-1] > 2, mlp


def test_standard_with_adam_grows_the_logits_with_width(data_dir, tmp_path):
  """Standard + Adam: the logits' RMS grows monotonically, > 3x over 8x width (measured
  4.5x), and the MLP output > 8x (measured 31x)."""
  result = check(micro(data_dir, "standard"), WIDTHS, tmp=tmp_path)
  logits = last(result, "activation_rms", "logits")
  assert np.all(np.diff(logits) > 0) and logits[-1] / logits[0] > 3, logits
  mlp = last(result, "activation_rms", "mlp_output")
  assert mlp[-1] / mlp[0] > 8, mlp


def test_completep_is_flat_across_4x_depth_and_standard_is_not(data_dir, tmp_path):
  """CompleteP (branches x 1/L): every kind within 1.2x across depth 1..4 (measured <= 1.12,
  the attention output); standard: the residual stream's change since init grows
  monotonically, > 1.3x (measured 1.45x)."""
  completep = check(micro(data_dir, "completep", **DEPTH_MODEL), DEPTHS, "depths", tmp=tmp_path)
  for table in ("activation_rms", "update_rms"):
    for kind in C.KINDS:
      assert C.spread(completep, table, kind) < 1.2, (table, kind, last(completep, table, kind))
  standard = check(micro(data_dir, "standard", **DEPTH_MODEL), DEPTHS, "depths", tmp=tmp_path)
  residual = last(standard, "update_rms", "residual_stream")
  assert np.all(np.diff(residual) > 0) and residual[-1] / residual[0] > 1.3, residual


def test_the_command_writes_the_json_and_the_figure(tmp_path):
  argv = ["coord_check", "--config=configs/tiny.py", "--widths=32,64", "--steps=2",
          f"--out={tmp_path}", "--config.model.num_layers=1", "--config.model.ffn_dim=64",
          "--config.model.parametrization=mup", "--config.data.seq_len=16",
          "--config.data.global_batch_size=8", "--config.data.synthetic_train_tokens=20000",
          "--config.data.synthetic_val_tokens=2000", "--config.mesh.data=1"]
  assert cli_errors.run(C.main, argv) == 0
  result = json.load(open(tmp_path / "coord_check.json"))
  assert result["widths"] == [32, 64]
  assert set(result["activation_rms"]) == set(result["update_rms"]) == {
      "embedding", "attention_output", "mlp_output", "residual_stream", "logits"}
  for table in ("activation_rms", "update_rms"):
    for series in result[table].values():
      assert sorted(series) == ["32", "64"]
      assert all(len(v) == 3 and np.all(np.isfinite(v)) for v in series.values())
  assert result["update_rms"]["logits"]["32"][0] == 0.0
  assert os.path.getsize(tmp_path / "coord_check.png") > 0


@pytest.mark.parametrize("flags,message", [
    (["--widths=32,abc"], "--widths must be comma-separated integers"),
    (["--widths=32"], "--widths must hold at least two distinct integers >= 1"),
    (["--widths=32,0"], "--widths must hold at least two distinct integers >= 1"),
    (["--widths=32,36"], "--widths: 36 must be a multiple of 2 x model.num_heads=4"),
    (["--widths=32,64", "--depths=1,2"], "give exactly one of --widths and --depths"),
    (["--widths=32,64", "--steps=0"], "--steps must be an integer >= 1"),
    (["--widths=32,64", "--config.model.parametrization=mu"],
     "config.model.parametrization='mu': must be one of"),
    (["--widths=32,64", "--config.model.base_width=0"],
     "config.model.base_width=0: must be an integer >= 1"),
    (["--depths=1,2", "--config.model.base_depth=-1"],
     "config.model.base_depth=-1: must be an integer >= 1"),
])
def test_bad_input_is_one_error_line_before_compiling(flags, message, tmp_path, capsys,
                                                      monkeypatch):
  from optbench_jax.train import assembly   # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(assembly, "build", lambda *a, **k: pytest.fail("built a run"))
  argv = ["coord_check", "--config=configs/tiny.py", f"--out={tmp_path}", *flags]
  assert cli_errors.run(C.main, argv) == cli_errors.USER_ERROR
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_errors_are_user_errors():
  assert "CoordCheckError" in cli_errors.USER_ERROR_NAMES
  assert issubclass(config_lib.ConfigError, ValueError)
