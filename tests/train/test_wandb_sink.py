"""train/wandb_sink.py: an offline W&B run holds the run's records and summary."""

import glob
import json
import os
import struct
import sys

import pytest

from optbench_jax import config as config_lib
from optbench_jax import train
from optbench_jax.train import state as state_lib
from optbench_jax.train import step as step_lib
from optbench_jax.train import wandb_sink
from tests.train import tiny


def wandb_records(path):
  """The protobuf records of a ``run-<id>.wandb`` file: W&B's own ``Record`` messages in its
  LevelDB-style log (a ``:W&B`` header, 32 KiB blocks of chunks with 7-byte headers: crc32,
  length, type full/first/middle/last). wandb 0.31 ships no Python reader for it."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  data = open(path, "rb").read()
  assert data[:4] == b":W&B"
  pos, chunks, block, header = 7, [], 32 * 1024, 7
  while pos + header <= len(data):
    if block - pos % block < header:   # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
    chunks.append(data[pos + header:pos + header + length])
    pos += header + length
    if kind in (1, 4):                 # full, last
      record = wandb_internal_pb2.Record()
      record.ParseFromString(b"".join(chunks))
      chunks = []
      yield record


def items(update):
  return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}


def test_offline_run_logs_every_record_at_its_step_and_the_summary(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_CONSOLE", "off")
  (tmp_path / "wandb_dir").mkdir()
  config = tiny.micro_config(tmp_path / "data", steps=3, dynamics_every=3)
  config.train.weight_averaging.ema_decay = 0.5
  config.logging.wandb.update(project="optbench-test", mode="offline")
  summary = train.run(config, str(tmp_path / "work"), devices=tiny.one_device())
  assert summary["status"] == "completed"

  run_id = (tmp_path / "work" / "wandb_run_id").read_text().strip()
  [path] = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / f"offline-run-*-{run_id}" /
                         f"run-{run_id}.wandb"))
  records = list(wandb_records(path))
  history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
  assert [row["_step"] for row in history] == [1, 2, 3]
  assert all("loss" in row and "lr" in row for row in history)
  last = history[-1]   # step 3: the train record, the dynamics and the final eval, merged
  assert last["eval_loss"] == summary["final_eval_loss"]
  assert last["eval_loss_ema"] == summary["final_eval_loss_ema"]
  assert "dynamics/layers.0.attn.q_proj.kernel/angular_update" in last
  final_summary = {}
  for r in records:
    if r.WhichOneof("record_type") == "summary":
      final_summary.update(items(r.summary.update))
  assert final_summary["final_eval_loss"] == summary["final_eval_loss"]
  assert final_summary["final_eval_loss_ema"] == summary["final_eval_loss_ema"]
  assert final_summary["status"] == "completed" and final_summary["steps"] == 3
  [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
  logged_config = items(run.config.update)
  assert logged_config["train"]["steps"] == 3
  assert logged_config["logging"]["wandb"]["mode"] == "offline"


def test_requested_but_not_installed_fails_in_one_line_before_compiling(tmp_path, monkeypatch):
  def forbidden(*args, **kwargs):
    raise AssertionError("the trainer started compiling before rejecting the config")
  monkeypatch.setattr(state_lib, "create_sharded_state", forbidden)
  monkeypatch.setattr(step_lib, "make_train_step", forbidden)
  monkeypatch.setitem(sys.modules, "wandb", None)   # `import wandb` raises ImportError
  config = tiny.micro_config(tmp_path / "data")
  config.logging.wandb.update(project="optbench-test", mode="online")
  with pytest.raises(config_lib.ConfigError, match=r"^config\.logging\.wandb: .*needs the wandb "
                     r"package") as error:
    train.run(config, str(tmp_path / "work"), devices=tiny.one_device())
  assert "\n" not in str(error.value)
  assert not (tmp_path / "work").exists()
  config.logging.wandb.mode = "disabled"            # off: wandb is never imported
  wandb_sink.check(config_lib.resolve(config))


def test_bad_mode_is_one_config_error():
  with pytest.raises(config_lib.ConfigError, match=r"^config\.logging\.wandb\.mode must be one of"):
    config_lib.resolve({"logging": {"wandb": {"mode": "on"}}})
