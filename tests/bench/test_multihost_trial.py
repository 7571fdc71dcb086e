"""A sweep trial as a 2-process job (``hosts_per_trial=2``): one trial, one outcome, one divergence stop."""

import os

import pytest

from optbench_jax.bench import results_store, sweep, sweep_config

pytestmark = pytest.mark.slow

SPEC = dict(
    name="multihost-trial", base_config="configs/tiny.py", hosts_per_trial=2,
    overrides={"optimizer": {"schedule": {"warmup_steps": 2}},
               "mesh": {"data": 2, "fsdp": 4},
               "train": {"log_every": 5, "eval_every": 0, "eval_batches": 1,
                         "checkpoint_every": 100, "full_eval_at_end": False},
               "data": {"synthetic_train_tokens": 200_000, "synthetic_val_tokens": 20_000,
                        "global_batch_size": 16, "seq_len": 32}},
    budgets=[30], seeds=[0], strategy="grid", speedup=dict(gamma="loss_floor", num_bootstrap=10),
    # lr 1e-5 barely moves from ln(512) = 6.24: stopped by the rule at step 15.
    divergence=dict(loss_threshold=5.9, after_steps=15, after_fraction=1.0),
    optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.99},
                              grid={"learning_rate": [1e-5, 2e-2]})})


def test_a_two_process_trial_is_one_trial_with_one_outcome(tmp_path):
  lines = []
  out = sweep.run_sweep(SPEC, str(tmp_path), parallel=1, log=lines.append)
  assert (out.recorded["completed"], out.recorded["diverged"], out.recorded["failed"]) == \
      (1, 1, 0), (out, lines)
  assert out.launched == 2
  with results_store.ResultsStore.open_existing(str(tmp_path / "results.sqlite")) as store:
    results = {r.hparams["learning_rate"]: r for r in store.latest()}
  good, bad = results[2e-2], results[1e-5]
  assert good.status == "completed" and good.steps == 30 and good.final_eval_loss < 5.9
  assert bad.status == "diverged" and "5.9" in bad.reason and bad.steps < 30, bad.reason
  for r in (good, bad):   # both hosts ran, each with its own log
    assert os.path.getsize(os.path.join(r.workdir, "trial.host1.log")) > 0
    summary = os.path.join(r.workdir, "summary.json")
    if os.path.exists(summary):
      assert '"processes": 2' in open(summary).read()


def test_hosts_per_trial_must_match_the_mesh(tmp_path):
  bad = dict(SPEC, hosts_per_trial=3)
  with pytest.raises(sweep_config.SweepConfigError, match="hosts_per_trial=3 does not match"):
    sweep.run_sweep(bad, str(tmp_path), log=lambda _: None)
  assert not os.path.exists(tmp_path / "results.sqlite")


def test_hosts_per_trial_is_not_part_of_the_fingerprint():
  one, _, f1 = sweep_config.load(dict(SPEC, hosts_per_trial=1))
  two, _, f2 = sweep_config.load(SPEC)
  assert f1 == f2 and one["hosts_per_trial"] == 1 and two["hosts_per_trial"] == 2
