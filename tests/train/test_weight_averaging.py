"""train/weight_averaging.py: EMA and tail averages in the state, evaluated beside the raw weights."""

import json
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from optbench_jax import train
from optbench_jax.train import loop
from optbench_jax.train import metrics as metrics_lib
from optbench_jax.train import state as state_lib
from tests.train import tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("corpus")


def averaged_config(data_dir, **train_kwargs):
  config = tiny.micro_config(data_dir, **train_kwargs)
  config.train.weight_averaging.update(ema_decay=0.75, ema_start=1, tail_fraction=0.5)
  return config


def batches(n):
  rng = np.random.default_rng(0)
  for _ in range(n):
    tokens = rng.integers(0, 128, size=(16, 17), dtype=np.int32)
    yield {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}


def test_averages_equal_their_closed_forms(tmp_path):
  steps, decay, start = 5, 0.75, 1
  config = averaged_config(tmp_path, steps=steps)
  run = train.build(config, tiny.one_device())
  state = run.create_state(seed=0)
  thetas = [jax.tree.map(np.asarray, state.params)]   # theta_0 .. theta_T, copied to the host
  for batch in batches(steps):
    state, _ = run.train_step(state, batch)
    thetas.append(jax.tree.map(np.asarray, state.params))
  tail_start = math.ceil((1 - 0.5) * steps)           # T0 = 3: mean of theta_3, theta_4, theta_5

  def ema(leaves):   # ema_t = theta_t for t <= start, then d ema + (1 - d) theta_t
    value = np.asarray(leaves[start], np.float64)
    for x in leaves[start + 1:]:
      value = decay * value + (1 - decay) * np.asarray(x, np.float64)
    return value

  expected_ema = jax.tree.map(lambda *leaves: ema(leaves), *thetas)
  expected_tail = jax.tree.map(lambda *leaves: np.mean(np.asarray(leaves[tail_start:],
                                                                  np.float64), axis=0), *thetas)
  assert sorted(state.averages) == ["ema", "tail"]
  for got, want in ((state.averages["ema"], expected_ema), (state.averages["tail"],
                                                             expected_tail)):
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7), got, want)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(got))
  # The averages are laid out exactly like the parameters.
  for name in ("ema", "tail"):
    assert (jax.tree.map(lambda a: a.sharding, state.averages[name])
            == jax.tree.map(lambda p: p.sharding, state.params))


def test_off_leaves_the_state_and_the_step_unchanged(tmp_path):
  """Averaging off: a plain TrainState and the very jaxpr of a config without the section;
  on, training itself (params, optimizer state) is bit-identical to off."""
  off_config = tiny.micro_config(tmp_path)
  legacy = off_config.to_dict()
  del legacy["train"]["weight_averaging"]
  off, legacy_run = train.build(off_config, tiny.one_device()), train.build(legacy,
                                                                            tiny.one_device())
  on = train.build(averaged_config(tmp_path), tiny.one_device())
  off_state, on_state = off.create_state(seed=0), on.create_state(seed=0)
  assert type(off_state) is state_lib.TrainState
  assert type(on_state) is state_lib.AveragedTrainState
  batch = next(batches(1))
  jaxpr = str(jax.make_jaxpr(off.train_step)(off_state, batch))
  assert jaxpr == str(jax.make_jaxpr(legacy_run.train_step)(off_state, batch))
  assert jaxpr != str(jax.make_jaxpr(on.train_step)(on_state, batch))
  for batch in batches(3):
    off_state, off_metrics = off.train_step(off_state, batch)
    on_state, on_metrics = on.train_step(on_state, batch)
  for a, b in zip(jax.tree.leaves((off_state.params, off_state.opt_state, off_metrics)),
                  jax.tree.leaves((on_state.params, on_state.opt_state, on_metrics))):
    np.testing.assert_array_equal(a, b)


def restore_averages(workdir, step, run):
  """The averages of ``workdir``'s checkpoint at ``step`` (partial orbax restore)."""
  target = {"averages": state_lib.with_shardings(run.abstract_state.averages,
                                                 run.state_shardings.averages)}
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)))
  manager.close()
  return restored["state"]["averages"]


def eval_records(workdir):
  return [r for r in metrics_lib.read_records(os.path.join(workdir, "metrics.jsonl"))
          if "eval_loss" in r]


def test_sigterm_resume_is_bit_for_bit_and_averages_are_reported_apart(tmp_path, data_dir,
                                                                       monkeypatch):
  config = averaged_config(data_dir, steps=8, checkpoint_every=3, eval_every=2)
  full = train.run(config, str(tmp_path / "full"), devices=tiny.one_device())
  assert full["status"] == "completed"

  real_to_global, calls = loop._to_global, []
  def to_global_then_sigterm(batch, sharding):
    calls.append(1)
    if len(calls) == 7:   # steps 1-4 and the step-2 and step-4 evals; the notice comes in step 5
      os.kill(os.getpid(), signal.SIGTERM)
    return real_to_global(batch, sharding)
  monkeypatch.setattr(loop, "_to_global", to_global_then_sigterm)
  stopped = train.run(config, str(tmp_path / "resumed"), devices=tiny.one_device())
  assert stopped["status"] == "preempted" and stopped["steps"] == 5
  monkeypatch.setattr(loop, "_to_global", real_to_global)
  resumed = train.run(config, str(tmp_path / "resumed"), devices=tiny.one_device())
  assert resumed["resumed_from_step"] == 5 and resumed["steps"] == 8

  run = train.build(config, tiny.one_device())
  for a, b in zip(jax.tree.leaves(restore_averages(tmp_path / "full", 8, run)),
                  jax.tree.leaves(restore_averages(tmp_path / "resumed", 8, run))):
    np.testing.assert_array_equal(a, b)
  assert eval_records(tmp_path / "resumed") == eval_records(tmp_path / "full")
  for key in ("final_eval_loss", "final_eval_loss_ema", "final_eval_loss_tail"):
    assert resumed[key] == full[key]

  # Reported apart: EMA from its first averaged step (2), the tail from T0 + 1 = 5; the raw
  # loss stays eval_loss and final_eval_loss.
  records = eval_records(tmp_path / "full")
  assert [sorted(k for k in r if k.startswith("eval_loss")) for r in records] == [
      ["eval_loss", "eval_loss_ema"], ["eval_loss", "eval_loss_ema"],
      ["eval_loss", "eval_loss_ema", "eval_loss_tail"],
      ["eval_loss", "eval_loss_ema", "eval_loss_tail"]]
  final = records[-1]
  on_disk = json.load(open(tmp_path / "full" / "summary.json"))
  assert on_disk["final_eval_loss"] == final["eval_loss"]
  assert on_disk["final_eval_loss_ema"] == final["eval_loss_ema"]
  assert on_disk["final_eval_loss_tail"] == final["eval_loss_tail"]
  assert len({final["eval_loss"], final["eval_loss_ema"], final["eval_loss_tail"]}) == 3


def test_off_reports_no_averages(tmp_path, data_dir):
  summary = train.run(tiny.micro_config(data_dir, steps=2), str(tmp_path),
                      devices=tiny.one_device())
  assert summary["final_eval_loss_ema"] is None and summary["final_eval_loss_tail"] is None
  assert summary["final_eval_loss"] is not None
  assert all(k == "eval_loss" or not k.startswith("eval_loss")
             for r in eval_records(tmp_path) for k in r)
