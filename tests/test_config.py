"""Bad input fails with one clear ConfigError before anything is compiled."""

import json
import os
import subprocess
import sys

import jax
import pytest

from optbench_jax import train
from optbench_jax import config as config_lib
from optbench_jax.train import state as state_lib
from optbench_jax.train import step as step_lib
from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_compile(monkeypatch):
  """Any attempt to build the sharded state or the train step fails the test."""
  def forbidden(*args, **kwargs):
    raise AssertionError("the trainer started compiling before rejecting the config")
  monkeypatch.setattr(state_lib, "create_sharded_state", forbidden)
  monkeypatch.setattr(step_lib, "make_train_step", forbidden)


def _expect(config, message, tmp_path, devices):
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    train.run(config, str(tmp_path / "work"), devices=devices)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "work" / "checkpoints").exists()


def test_unknown_config_key(tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.train.unlock()
  config.train.stesp = 10
  _expect(config, r"unknown config key 'train.stesp' \(did you mean 'train.steps'\?\)",
          tmp_path, tiny.one_device())


def test_batch_not_divisible_by_devices(tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.data.global_batch_size = 12
  config.mesh.update(data=8)
  _expect(config, r"micro-batch .* 12 .* divisible by the 8 devices", tmp_path,
          jax.devices()[:8])


def test_batch_not_divisible_by_accumulation(tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.data.grad_accum_steps = 3
  _expect(config, "grad_accum_steps", tmp_path, tiny.one_device())


def test_mesh_larger_than_the_device_count(tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.mesh.update(data=4, fsdp=4)
  _expect(config, "needs 16 devices, but 8 device", tmp_path, jax.devices()[:8])


def test_unknown_optimizer_and_hyperparameter(tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.optimizer.name = "adamww"
  _expect(config, "unknown optimizer 'adamww'; did you mean 'adamw'", tmp_path,
          tiny.one_device())
  config.optimizer.name = "adamw"
  config.optimizer.hparams = dict(bta1=0.9)
  _expect(config, "unknown hyperparameter.*'bta1'", tmp_path, tiny.one_device())


def test_missing_data_directory(tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.data.update(source="shards", path=str(tmp_path / "missing"))
  _expect(config, "is not a directory", tmp_path, tiny.one_device())


def test_bad_values_name_their_key(tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.model.d_model = 33
  _expect(config, r"d_model \(33\) must be divisible by model.num_heads", tmp_path,
          tiny.one_device())


def test_partial_configs_get_the_defaults():
  resolved = config_lib.resolve({"train": {"steps": 7}, "optimizer": {"hparams": {"b1": 0.5}}})
  assert resolved.train.steps == 7 and resolved.train.log_every == 50
  assert resolved.optimizer.hparams.b1 == 0.5 and resolved.optimizer.name == "adamw"


def test_json_config_round_trip(tmp_path):
  config = tiny.micro_config(tmp_path)
  path = tmp_path / "config.json"
  path.write_text(json.dumps(config.to_dict()))
  sys.path.insert(0, REPO)
  from configs import from_json  # pylint: disable=import-outside-toplevel
  loaded = from_json.get_config(str(path))
  assert loaded.to_dict() == config_lib.resolve(config).to_dict()


def test_command_line_rejects_an_unknown_override_and_dry_runs(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  bad = subprocess.run(
      [sys.executable, "-m", "trainers.lm", "--config=configs/tiny.py", "--dry_run",
       "--config.train.stesp=3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "stesp" in bad.stderr
  ok = subprocess.run(
      [sys.executable, "-m", "trainers.lm", "--config=configs/tiny.py", "--dry_run",
       f"--workdir={tmp_path}/w"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert "parameters" in ok.stdout and "per device" in ok.stdout
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("update", [
    dict(kind="moe", num_experts=1),          # one owner: ModelSpec says >= 2
    dict(d_model=33),
    dict(num_kv_heads=3),
    dict(remat="sometimes"),
])
def test_bad_model_settings_give_one_error_from_model_spec(update, tmp_path, no_compile):
  """The trainer, the dry run and a sweep's pre-flight all report ModelSpec's message."""
  from optbench_jax import models  # pylint: disable=import-outside-toplevel
  config = tiny.micro_config(tmp_path)
  config.model.update(**update)
  with pytest.raises(ValueError) as spec_error:
    models.ModelSpec.from_config(config.model)
  expected = f"config.{spec_error.value}"
  for entry in (lambda: train.run(config, str(tmp_path / "work"), devices=tiny.one_device()),
                lambda: train.dry_run(config, tiny.one_device()),
                lambda: train.check(config)):
    with pytest.raises(config_lib.ConfigError) as error:
      entry()
    assert str(error.value) == expected


def test_a_run_resolves_and_checks_its_config_once(tmp_path, monkeypatch):
  """One resolve, one unknown-key walk and one value check per run, however many
  modules (loop, assembly, optimizer) look at the config."""
  counts = {"resolve": 0, "check_known_keys": 0, "check_values": 0}
  for name in counts:
    real = getattr(config_lib, name)

    def counted(*args, real=real, name=name, **kwargs):
      counts[name] += 1
      return real(*args, **kwargs)
    monkeypatch.setattr(config_lib, name, counted)
  summary = train.run(tiny.micro_config(tmp_path, steps=2), str(tmp_path / "work"),
                      devices=tiny.one_device())
  assert summary["status"] == "completed"
  assert counts == {"resolve": 1, "check_known_keys": 1, "check_values": 1}


@pytest.mark.parametrize("update, key", [
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(ema_decay=-0.1), "ema_decay"),
    (dict(tail_fraction=1.0), "tail_fraction"),
    (dict(tail_fraction=-0.5), "tail_fraction"),
    (dict(ema_decay=0.9, ema_start=4), "ema_start"),    # train.steps = 4
])
def test_bad_weight_averaging_settings_name_their_key(update, key, tmp_path, no_compile):
  config = tiny.micro_config(tmp_path)
  config.train.weight_averaging.update(**update)
  _expect(config, rf"^config\.train\.weight_averaging\.{key} must be", tmp_path,
          tiny.one_device())
