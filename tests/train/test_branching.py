"""A shorter WSD run branched from a longer run's stable phase equals its separate run."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from optbench_jax import train
from optbench_jax.config import ConfigError
from optbench_jax.train import metrics as metrics_lib
from tests.train import tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


def wsd(data_dir, steps, **train_kwargs):
  config = tiny.micro_config(data_dir, steps=steps, eval_every=steps // 2, eval_batches=1,
                             **train_kwargs)
  config.optimizer.schedule.update(name="wsd", warmup_steps=2, decay_fraction=0.25,
                                   final_fraction=0.0)
  return config


def final_params(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return restored["state"]["params"]


def records(workdir):
  return metrics_lib.read_records(os.path.join(workdir, "metrics.jsonl"))


def test_branched_run_equals_the_separate_run_bit_for_bit(tmp_path, data_dir):
  # 8 steps decay over the last 2: the 8-step run's stable phase covers steps 0..5.
  long = train.run(wsd(data_dir, 12, keep_steps=[6], checkpoint_every=0, keep_checkpoints=1),
                   str(tmp_path / "long"), devices=tiny.one_device())
  assert long["status"] == "completed"
  assert sorted(int(s) for s in os.listdir(tmp_path / "long" / "checkpoints")) == [6, 12]

  separate = train.run(wsd(data_dir, 8), str(tmp_path / "separate"), devices=tiny.one_device())
  branched = train.run(wsd(data_dir, 8, branch_from=str(tmp_path / "long"), branch_step=6),
                       str(tmp_path / "branched"), devices=tiny.one_device())
  assert branched["branched_from"] == {"workdir": str(tmp_path / "long"), "step": 6}
  assert branched["final_eval_loss"] == separate["final_eval_loss"]
  jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path / "branched", 8),
               final_params(tmp_path / "separate", 8))
  losses = lambda w: [(r["step"], r["loss"]) for r in records(w) if "loss" in r]
  assert losses(tmp_path / "branched") == losses(tmp_path / "separate")
  # The record survives a resume of the branched run.
  rerun = train.run(wsd(data_dir, 8, branch_from=str(tmp_path / "long"), branch_step=6),
                    str(tmp_path / "branched"), devices=tiny.one_device())
  assert rerun["branched_from"]["step"] == 6


def test_a_branch_outside_the_shared_stable_phase_is_refused_before_restoring(tmp_path,
                                                                              data_dir):
  long = wsd(data_dir, 12, keep_steps=[6, 8], keep_checkpoints=1)
  train.run(long, str(tmp_path / "long"), devices=tiny.one_device())
  # The 12-step run decays from step 10 on; a 16-step run is still stable there.
  late = wsd(data_dir, 16, branch_from=str(tmp_path / "long"), branch_step=11)
  with pytest.raises(ConfigError, match="learning rates differ from step 10 on"):
    train.run(late, str(tmp_path / "late"), devices=tiny.one_device())
  other = wsd(data_dir, 8, branch_from=str(tmp_path / "long"), branch_step=6)
  other.optimizer.learning_rate = 2e-3
  with pytest.raises(ConfigError, match="optimizer.learning_rate"):
    train.run(other, str(tmp_path / "other"), devices=tiny.one_device())
  missing = wsd(data_dir, 8, branch_from=str(tmp_path / "long"), branch_step=5)
  with pytest.raises(ConfigError, match=r"no checkpoint at step 5 \(it has \[6, 8, 12\]\)"):
    train.run(missing, str(tmp_path / "missing"), devices=tiny.one_device())
  nowhere = wsd(data_dir, 8, branch_from=str(tmp_path / "nowhere"), branch_step=6)
  with pytest.raises(ConfigError, match="not a training work directory"):
    train.run(nowhere, str(tmp_path / "n"), devices=tiny.one_device())
  assert not any(os.path.exists(tmp_path / w / "checkpoints" / "8")
                 for w in ("late", "other", "missing"))
  with pytest.raises(ConfigError, match="beyond that run's 12 steps"):
    train.run(wsd(data_dir, 20, branch_from=str(tmp_path / "long"), branch_step=14),
              str(tmp_path / "beyond"), devices=tiny.one_device())


def test_a_tail_weight_average_bounds_the_shared_steps(tmp_path, data_dir):
  from optbench_jax.train import branching  # pylint: disable=import-outside-toplevel
  short, long = wsd(data_dir, 8), wsd(data_dir, 12)
  assert branching.shared_steps(short, long) == 7      # lr(6) is the peak in both; 8 decays at 7
  for c in (short, long):
    c.train.weight_averaging.tail_fraction = 0.5       # tails start at steps 4 and 6
  assert branching.shared_steps(short, long) == 3
  long.train.keep_steps = [6]
  train.run(long, str(tmp_path / "long"), devices=tiny.one_device())
  late = wsd(data_dir, 8, branch_from=str(tmp_path / "long"), branch_step=6)
  late.train.weight_averaging.tail_fraction = 0.5
  with pytest.raises(ConfigError, match="inside a tail weight average"):
    train.run(late, str(tmp_path / "late"), devices=tiny.one_device())
