"""Reliability, in-process cases: real files, real signals, the real trainer.

Torn metrics lines, damaged checkpoints, an empty validation split, SIGTERM in
the final eval, an unwritable checkpoints directory, config changes on resume,
reruns of completed runs, bad work directories and divergence. The cases that
need separate processes (locks, SIGKILL, disk full, the command lines) are in
test_reliability_processes.py.
"""

import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

from optbench_jax import data as data_lib
from optbench_jax import train
from optbench_jax.data import prepare
from optbench_jax.train import checkpoint as checkpoint_lib
from optbench_jax.train import loop
from optbench_jax.train import metrics as metrics_lib
from tests.train import tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


def six_step_config(data_dir):
  return tiny.micro_config(data_dir, steps=6, checkpoint_every=2, keep_checkpoints=3)


@pytest.fixture(scope="module")
def six_steps(data_dir, tmp_path_factory):
  """(the summary, a workdir) of a completed 6-step run with checkpoints 2, 4 and 6."""
  workdir = tmp_path_factory.mktemp("six_steps")
  return train.run(six_step_config(data_dir), str(workdir), devices=tiny.one_device()), workdir


def copy_interrupted(six_steps, target):
  """The reference run as a kill after its last save, before its summary, leaves it."""
  shutil.copytree(six_steps[1], target)
  os.remove(os.path.join(target, "summary.json"))
  return target


def records(workdir):
  return metrics_lib.read_records(os.path.join(workdir, "metrics.jsonl"))


def losses(workdir):
  return [(r["step"], r["loss"]) for r in records(workdir) if "loss" in r]


def run(config, workdir, **kw):
  return train.run(config, str(workdir), devices=tiny.one_device(), **kw)


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path, data_dir, six_steps):
  """Case 3: a kill or full disk mid-write leaves a torn line; the rerun must not crash."""
  full, reference = six_steps
  workdir = copy_interrupted(six_steps, tmp_path / "w")
  # The process died after step 5's record, in the middle of step 6's, before saving 6.
  shutil.rmtree(workdir / "checkpoints" / "6")
  kept = [json.dumps(r) for r in records(workdir) if r["step"] <= 5]
  (workdir / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 6, "lo')
  resumed = run(six_step_config(data_dir), workdir)
  assert resumed["status"] == "completed" and resumed["resumed_from_step"] == 4
  assert losses(workdir) == losses(reference)
  assert resumed["final_eval_loss"] == full["final_eval_loss"]
  assert [r["step"] for r in records(workdir) if "full_eval" in r] == [6]


def _damage(step_dir, kind):
  if kind == "truncated_arrays":
    for array_file in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
      with open(array_file, "r+b") as f:
        f.truncate(10)
  elif kind == "missing_iterator_file":
    (step_dir / "data" / "process_0-of-1.json").unlink()
  else:
    (step_dir / "state" / "_METADATA").write_text("")


# The reads a failed restore abandons are collected quietly (no "Exception ignored in" screens).
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", ["truncated_arrays", "missing_iterator_file", "empty_metadata"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, data_dir, six_steps,
                                                                 kind, caplog):
  """Case 4: resume from the newest checkpoint that restores, loudly; keep the bad one aside."""
  full, reference = six_steps
  workdir = copy_interrupted(six_steps, tmp_path / "w")
  _damage(workdir / "checkpoints" / "6", kind)
  resumed = run(six_step_config(data_dir), workdir)
  assert resumed["resumed_from_step"] == 4 and resumed["status"] == "completed"
  assert resumed["final_eval_loss"] == full["final_eval_loss"]
  assert losses(workdir) == losses(reference)
  aside = os.listdir(workdir / checkpoint_lib.DAMAGED_DIR)
  assert len(aside) == 1 and aside[0].startswith("6.")
  assert "RESUMING FROM AN OLDER CHECKPOINT: step 4" in caplog.text


def test_no_checkpoint_restoring_is_one_error_and_sets_nothing_aside(tmp_path, data_dir,
                                                                    six_steps):
  workdir = copy_interrupted(six_steps, tmp_path / "w")
  for step in ("2", "4", "6"):
    _damage(workdir / "checkpoints" / step, "empty_metadata")
  with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint in .* restores: step 6"):
    run(six_step_config(data_dir), workdir)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
  assert not (workdir / checkpoint_lib.DAMAGED_DIR).exists()


def test_empty_validation_split_is_refused_before_training(tmp_path):
  """Case 5: a corpus without a val split fails in setup, not at the final eval."""
  text = tmp_path / "doc.txt"
  text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
  corpus = prepare.prepare_corpus(prepare.iter_text_documents([str(text)]), tmp_path / "corpus",
                                  val_fraction=0.0, workers=0, progress=False)
  assert corpus.num_tokens("val") == 0
  config = tiny.micro_config(tmp_path / "corpus", steps=4)
  config.data.source = "shards"
  config.model.vocab_size = 50304
  with pytest.raises(train.ConfigError, match="validation split .* has 0 tokens"):
    run(config, tmp_path / "w")
  assert not (tmp_path / "w").exists()   # case 14: no empty workdir left behind
  config.data.seq_len = 4096              # case 14: seq_len longer than the corpus
  with pytest.raises(train.ConfigError, match="seq_len=4096 is larger than the train split"):
    run(config, tmp_path / "w")


def test_sigterm_during_the_final_eval_saves_and_reports_preempted(tmp_path, data_dir,
                                                                  monkeypatch):
  """Case 6: a signal after the last step must not kill the run nor leave a -tmp checkpoint."""
  config = tiny.micro_config(data_dir, steps=4, full_eval_at_end=True)
  full = run(config, tmp_path / "full")
  real = data_lib.make_eval_iterator

  def signalled(*args, **kwargs):
    if kwargs.get("max_batches") is None:   # the full final eval, not the set-up check
      os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
  monkeypatch.setattr(loop.data_lib, "make_eval_iterator", signalled)
  stopped = run(config, tmp_path / "w")
  monkeypatch.setattr(loop.data_lib, "make_eval_iterator", real)
  assert stopped["status"] == "preempted" and "final eval" in stopped["message"]
  assert os.listdir(tmp_path / "w" / "checkpoints") == ["4"]   # complete, not 4.orbax-checkpoint-tmp
  done = run(config, tmp_path / "w")
  assert done["status"] == "completed" and done["final_eval_loss"] == full["final_eval_loss"]
  assert losses(tmp_path / "w") == losses(tmp_path / "full")
  assert done["tokens_per_s"] == stopped["tokens_per_s"] is not None   # carried over


def test_unwritable_checkpoints_directory_is_found_before_training(tmp_path, data_dir):
  """Case 7: a read-only mount (root bypasses permission bits, so a real ro tmpfs)."""
  if os.geteuid() != 0:
    pytest.skip("needs root to mount a read-only tmpfs")
  target = tmp_path / "w" / "checkpoints"
  target.mkdir(parents=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)]).returncode:
    pytest.skip("mount is not permitted here")
  try:
    with pytest.raises(train.ConfigError, match="cannot write checkpoints to .*Read-only"):
      run(tiny.micro_config(data_dir, steps=4), tmp_path / "w")
  finally:
    subprocess.run(["umount", str(target)], check=True)
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_config_changes_are_refused_or_recorded_and_completed_runs_are_left_alone(tmp_path,
                                                                                 data_dir):
  """Cases 8 and 10."""
  config = tiny.micro_config(data_dir, steps=4, checkpoint_every=2)
  first = run(config, tmp_path)
  before = (tmp_path / "metrics.jsonl").read_text()
  again = run(config, tmp_path)                                   # case 10
  assert again == json.loads((tmp_path / "summary.json").read_text())
  assert again["tokens_per_s"] == first["tokens_per_s"] is not None
  assert (tmp_path / "metrics.jsonl").read_text() == before

  changed = tiny.micro_config(data_dir, steps=4, checkpoint_every=2)
  changed.optimizer.learning_rate = 2 * config.optimizer.learning_rate
  changed.model.d_model = 64
  with pytest.raises(train.ConfigError) as info:
    run(changed, tmp_path)
  message = str(info.value)
  assert "\n" not in message and "model.d_model: 32 -> 64" in message
  assert f"optimizer.learning_rate: {config.optimizer.learning_rate} -> " in message
  assert "--allow_config_change" in message

  new_eval = tiny.micro_config(data_dir, steps=4, checkpoint_every=2, eval_batches=2)
  rerun = run(new_eval, tmp_path, allow_config_change=True)
  assert rerun["status"] == "completed" and rerun["resumed_from_step"] == 4
  record = json.loads((tmp_path / "run_record.json").read_text())
  assert record["changes"][0]["diff"] == ["train.eval_batches: 1 -> 2"]
  assert record["changes"][0]["from_step"] == 4
  assert [r["step"] for r in records(tmp_path) if "eval_loss" in r] == [4]   # replaced, once
  operational = tiny.micro_config(data_dir, steps=4, checkpoint_every=2, eval_batches=2,
                                  log_every=2, keep_checkpoints=5)
  assert run(operational, tmp_path)["status"] == "completed"   # not compared: no refusal


def test_bad_work_directories(tmp_path, data_dir):
  """Cases 9 and 14: an empty --workdir= and a workdir that is a file."""
  config = tiny.micro_config(data_dir)
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    with pytest.raises(train.ConfigError, match="--workdir is empty"):
      train.run(config, "", devices=tiny.one_device())
  finally:
    os.chdir(cwd)
  assert os.listdir(tmp_path) == []
  (tmp_path / "file").write_text("")
  with pytest.raises(train.ConfigError, match="exists and is not a directory"):
    run(config, tmp_path / "file")


def test_divergence_keeps_only_healthy_checkpoints(tmp_path, data_dir):
  """Case 13: a loss blown far past a uniform guess stops the run before it is saved;
  `steps` is the step that diverged; a rerun with a changed config is refused."""
  def config(lr):
    c = tiny.micro_config(data_dir, steps=16, checkpoint_every=2, keep_checkpoints=2)
    c.optimizer.update(name="adamw", learning_rate=lr, grad_clip=0.0)
    c.optimizer.schedule.update(name="cosine", warmup_steps=12)   # healthy, then blows up
    return c
  summary = run(config(3.0), tmp_path)
  assert summary["status"] == "diverged", summary
  limit = 2 * np.log(config(3.0).model.vocab_size)
  logged = dict(losses(tmp_path))
  assert "left the healthy range" in summary["message"] or "non-finite" in summary["message"]
  assert summary["steps"] == summary["diverged_at_step"] == max(logged) + 1 > 4
  assert summary["tokens"] == summary["steps"] * 16 * 16
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert summary["kept_checkpoints"] == kept and kept and max(kept) < summary["steps"]
  assert all(np.isfinite(v) and v <= limit for v in logged.values())   # every kept one healthy
  with pytest.raises(train.ConfigError, match="optimizer.learning_rate: 3.0 -> 0.001"):
    run(config(1e-3), tmp_path)
