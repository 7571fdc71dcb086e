"""Sweep runner with a fake trial command (tests/bench/fake_trainer.py, a labelled test double).

Covers: failures and divergence recorded while the sweep continues, skip of
completed trials on rerun, resume of interrupted trials from their checkpoint,
parallel launches, coordinate descent through the runner, refusal of a foreign
store, and bad sweep configs failing before any trial starts.
"""

import json
import math
import os
import sqlite3
import sys

import pytest

from optbench_jax import workdir_files
from optbench_jax.bench import results_store as rs
from optbench_jax.bench import search_space, sweep, sweep_config, trial_process

FAKE = os.path.join(os.path.dirname(__file__), "fake_trainer.py")
BUDGET = 40


def fake_launcher(config_path, trial_dir):
  return [sys.executable, FAKE, config_path, trial_dir]


def never_launch(config_path, trial_dir):
  raise AssertionError("a trial was launched despite a bad sweep config")


def make_sweep(**changes):
  spec = dict(
      name="test", base_config="configs/tiny.py",
      overrides={"optimizer.schedule.warmup_steps": 5, "train.eval_every": 10},
      budgets=[BUDGET], seeds=[0, 1], strategy="grid", reference_optimizer="adamw",
      divergence=dict(loss_threshold=6.0, after_steps=2000, after_fraction=0.25),
      speedup=dict(gamma="loss_floor", num_bootstrap=50),
      optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.95},
                                grid={"learning_rate": [1e-3, 3e-3, 0.5, 0.3, 0.2]})})
  spec.update(changes)
  return spec


def run(spec, workdir, **kw):
  kw.setdefault("launcher", fake_launcher)
  return sweep.run_sweep(spec, str(workdir), poll_interval_s=0.02, log=lambda _: None, **kw)


def by_lr(store_path):
  """(every attempt, {(learning rate, seed): latest result})."""
  with rs.ResultsStore.open_existing(store_path) as store:
    return store.attempts(), {(r.hparams["learning_rate"], r.seed): r for r in store.latest()}


def test_grid_sweep_records_outcomes_and_continues(tmp_path):
  out = run(make_sweep(), tmp_path)
  assert out.launched == 6 and out.recorded == {"completed": 3, "diverged": 2, "failed": 1}
  _, results = by_lr(str(tmp_path / "results.sqlite"))
  assert results[(0.5, 0)].status == rs.FAILED
  assert "exit code 1" in results[(0.5, 0)].reason and "simulated crash" in results[(0.5, 0)].reason
  assert results[(0.3, 0)].status == rs.DIVERGED and "nan" in results[(0.3, 0)].reason
  # Stopped by the runner at the rule's step (0.25 * 40 = 10), not run to the end.
  assert results[(0.2, 0)].status == rs.DIVERGED and ">= 6.0" in results[(0.2, 0)].reason
  assert results[(0.2, 0)].steps < BUDGET
  best = results[(3e-3, 0)]
  expected = 1.5 + (math.log10(3e-3) + 2.5) ** 2 + 4.0 / math.sqrt(BUDGET)
  assert best.final_eval_loss == pytest.approx(expected)
  assert best.eval_curve[-1][0] == BUDGET and len(best.eval_curve) == 4
  assert best.budget_tokens == BUDGET * 32 * 64
  assert best.config["optimizer"]["hparams"] == {"b1": 0.9, "b2": 0.95}
  assert best.config["optimizer"]["learning_rate"] == 3e-3
  # The best point was replicated on the second seed, and only it.
  assert results[(3e-3, 1)].status == rs.COMPLETED
  assert {seed for (_, seed) in results} == {0, 1} and len(results) == 6
  # Each trial has its own workdir with its config.
  with open(os.path.join(best.workdir, "config.json")) as f:
    assert json.load(f)["train"]["steps"] == BUDGET


def test_rerun_skips_completed_and_keeps_history(tmp_path):
  run(make_sweep(), tmp_path)
  out = run(make_sweep(), tmp_path, retry_failed=False)
  assert out.launched == 0 and out.skipped == 6
  out = run(make_sweep(), tmp_path)        # only the crashed trial is retried
  assert out.launched == 1 and out.recorded["failed"] == 1
  attempts, _ = by_lr(str(tmp_path / "results.sqlite"))
  assert [r.status for r in attempts].count(rs.FAILED) == 2
  assert len(attempts) == 7


def test_interrupted_trials_resume_from_checkpoint(tmp_path, monkeypatch):
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [1e-3, 3e-3]})})
  monkeypatch.setenv("FAKE_PREEMPT_AT", "7")
  out = run(spec, tmp_path)
  assert len(out.interrupted) == 2 and sum(out.recorded.values()) == 0
  monkeypatch.delenv("FAKE_PREEMPT_AT")
  out = run(spec, tmp_path)
  assert out.launched == 2 and out.recorded["completed"] == 2
  _, results = by_lr(str(tmp_path / "results.sqlite"))
  for result in results.values():
    steps = [r["step"] for r in workdir_files.read_metrics(result.workdir)
             if "loss" in r]
    assert steps == list(range(1, BUDGET + 1))    # resumed at 8, nothing repeated


def test_a_trial_whose_storage_stopped_answering_is_interrupted_not_failed(tmp_path,
                                                                          monkeypatch):
  """Exit 3 (cli_errors.STORAGE_UNAVAILABLE: the trainer gave up on its gs:// storage, its
  last committed checkpoint intact) is an interruption: a rerun resumes it."""
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [1e-3]})})
  monkeypatch.setenv("FAKE_STORAGE_OUT_AT", "7")
  out = run(spec, tmp_path)
  assert len(out.interrupted) == 1 and sum(out.recorded.values()) == 0
  monkeypatch.delenv("FAKE_STORAGE_OUT_AT")
  out = run(spec, tmp_path)
  assert out.launched == 1 and out.recorded["completed"] == 1


def test_parallel_runs_trials_concurrently(tmp_path, monkeypatch):
  events = tmp_path / "events.txt"
  monkeypatch.setenv("FAKE_EVENTS", str(events))
  monkeypatch.setenv("FAKE_STEP_SLEEP", "0.01")
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [3e-4, 1e-3, 3e-3, 1e-2]})})
  out = run(spec, tmp_path / "run", parallel=2)
  assert out.recorded["completed"] == 4
  timeline = []
  for line in events.read_text().splitlines():
    kind, _, t = line.split()
    timeline.append((float(t), 1 if kind == "start" else -1))
  live, peak = 0, 0
  for _, delta in sorted(timeline):
    live += delta
    peak = max(peak, live)
  assert peak == 2


def test_coordinate_descent_through_runner(tmp_path):
  lrs = search_space.log_grid(1e-4, 1e-1, 7)
  spec = make_sweep(seeds=[0], strategy="coordinate_descent", trial_budget=6,
                    optimizers={"adamw": dict(baseline={"learning_rate": lrs[0], "b2": 0.95},
                                              grid={"learning_rate": lrs, "b2": [0.95, 0.99]})})
  out = run(spec, tmp_path, parallel=2)
  assert out.launched == 6                       # baseline + a 5-trial cut of round one
  _, results = by_lr(str(tmp_path / "results.sqlite"))
  best = min(results.values(), key=lambda r: r.objective)
  assert best.hparams["learning_rate"] == pytest.approx(10 ** -2.5, rel=1e-3)


def test_finished_but_unrecorded_trial_is_recorded_without_rerun(tmp_path):
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [1e-3]})})
  run(spec, tmp_path)
  os.remove(tmp_path / "results.sqlite")          # the sweep died before recording
  out = run(spec, tmp_path)
  assert out.launched == 0 and out.skipped == 1
  _, results = by_lr(str(tmp_path / "results.sqlite"))
  assert results[(1e-3, 0)].status == rs.COMPLETED


def test_foreign_or_newer_store_refused_before_any_trial(tmp_path):
  run(make_sweep(seeds=[0], optimizers={"adamw": dict(grid={"learning_rate": [1e-3]})}),
      tmp_path)
  changed = make_sweep(seeds=[0], optimizers={"adamw": dict(grid={"learning_rate": [2e-3]})})
  with pytest.raises(rs.StoreMismatchError, match="another sweep"):
    run(changed, tmp_path, launcher=never_launch)
  db = sqlite3.connect(tmp_path / "results.sqlite")
  with db:
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
  db.close()
  with pytest.raises(rs.StoreMismatchError, match="newer"):
    run(make_sweep(seeds=[0], optimizers={"adamw": dict(grid={"learning_rate": [1e-3]})}),
        tmp_path, launcher=never_launch)


@pytest.mark.parametrize("change, message", [
    (dict(optimizers={"adamw": dict(grid={"learning_rate": [1e-3]}),
                      "adamww": dict(grid={"learning_rate": [1e-3]})}),
     "unknown optimizer 'adamww'.*did you mean 'adamw'"),
    (dict(optimizers={"adamw": dict(grid={"learning_rate": [1e-3], "beta2": [0.9]})}),
     "unknown hyperparameter 'beta2'"),
    (dict(optimizers={"adamw": dict(grid={})}), "empty search space"),
    (dict(optimizers={"adamw": dict(grid={"learning_rate": []})}), "empty grid"),
    (dict(budgets=[5]), "budget 5 steps is not longer than the warmup"),
    (dict(optimizers={"adamw": dict(grid={"learning_rate": [1e-3], "warmup_steps": [10, 60]})}),
     "budget 40 steps is not longer than the warmup \\(60"),
    (dict(optimizers={"adamw": dict(grid={"learning_rate": [1e-3], "b1": [0.9, 1.5]})}),
     "b1 must be in"),
    (dict(budgets=[40, 80], speedup=dict(gamma="fit")), "needs >= 3 budgets"),
    (dict(reference_optimizer="nadamw"), "reference_optimizer 'nadamw'"),
    (dict(strategy="random"), "strategy .random."),
    (dict(tune_budgets=[41]), "tune_budgets \\[41\\] must be a non-empty subset"),
    (dict(overrides={"train.stepz": 3}), "'train.stepz' is not a trainer config key"),
    (dict(strategy="coordinate_descent"), "baseline, which lacks learning_rate"),
])
def test_bad_sweep_config_raises_before_any_trial(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    run(make_sweep(**change), tmp_path, launcher=never_launch)
  assert not os.path.exists(tmp_path / "trials")


def test_trial_ids_are_deterministic_and_distinct():
  a = sweep_config.trial_id("adamw", {"learning_rate": 1e-3, "b2": 0.95}, 100, 0)
  assert a == sweep_config.trial_id("adamw", {"b2": 0.95, "learning_rate": 0.001}, 100, 0)
  others = {sweep_config.trial_id("adamw", {"learning_rate": 1e-3, "b2": 0.95}, 200, 0),
            sweep_config.trial_id("adamw", {"learning_rate": 1e-3, "b2": 0.95}, 100, 1),
            sweep_config.trial_id("nadamw", {"learning_rate": 1e-3, "b2": 0.95}, 100, 0),
            sweep_config.trial_id("adamw", {"learning_rate": 2e-3, "b2": 0.95}, 100, 0)}
  assert a not in others and len(others) == 4


def test_untuned_budget_reuses_best_config(tmp_path):
  spec = make_sweep(budgets=[40, 80], tune_budgets=[40], seeds=[0, 1], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [1e-3, 3e-3]})})
  out = run(spec, tmp_path, parallel=2)
  assert out.launched == 2 + 1 + 2          # grid at 40, replicate at 40, best at 80 x 2 seeds
  _, results = by_lr(str(tmp_path / "results.sqlite"))
  at_80 = [r for r in results.values() if r.budget_steps == 80]
  assert len(at_80) == 2 and all(r.hparams["learning_rate"] == 3e-3 for r in at_80)


def test_hyperparameters_land_in_the_right_config_keys():
  plain = sweep_config.as_plain(make_sweep(optimizers={"schedule_free_adamw": dict(
      grid={"learning_rate": [1e-3]}, overrides={"optimizer": {"schedule": {"name": "constant"}}})},
      reference_optimizer="schedule_free_adamw"))
  base = sweep_config.load_python_config("configs/tiny.py")
  config = sweep_config.trial_config(
      plain, base, "schedule_free_adamw",
      {"learning_rate": 2e-3, "weight_decay": 0.2, "grad_clip": 0.7, "warmup_steps": 9,
       "hparams/warmup_steps": 11, "b2": 0.999}, 40, 3)
  assert config.optimizer.learning_rate == 2e-3 and config.optimizer.weight_decay == 0.2
  assert config.optimizer.grad_clip == 0.7 and config.optimizer.schedule.warmup_steps == 9
  assert config.optimizer.hparams.to_dict() == {"warmup_steps": 11, "b2": 0.999}
  assert config.optimizer.schedule.name == "constant" and config.train.steps == 40
  assert config.seed == 3 and config.data.shuffle_seed == 3


def test_hung_trial_is_stopped_and_recorded_failed(tmp_path, monkeypatch):
  monkeypatch.setattr(trial_process, "STOP_GRACE_S", 0.5)
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [3e-3, 0.1]})})
  out = run(spec, tmp_path, parallel=2, trial_timeout_s=3.0)
  assert out.recorded == {"completed": 1, "diverged": 0, "failed": 1}
  _, results = by_lr(str(tmp_path / "results.sqlite"))
  assert "no result after 3 s" in results[(0.1, 0)].reason


def truncated_summary_launcher(config_path, trial_dir):
  """A trial that dies leaving an empty summary.json (a trainer killed mid-write)."""
  script = "import sys; open(sys.argv[1] + '/summary.json', 'w'); sys.exit(143)"
  return [sys.executable, "-c", script, trial_dir]


def test_unreadable_summary_is_a_failed_trial_not_a_crashed_sweep(tmp_path):
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [3e-3]})})
  out = run(spec, tmp_path, launcher=truncated_summary_launcher)
  assert out.recorded == {"completed": 0, "diverged": 0, "failed": 1}
  _, results = by_lr(str(tmp_path / "results.sqlite"))
  reason = results[(3e-3, 0)].reason
  assert "summary.json unreadable" in reason and "exit code 143" in reason


def test_edge_extension_through_the_runner(tmp_path):
  """The fake trainer's best lr is 10^-2.5; a grid that stops below it is extended."""
  spec = make_sweep(seeds=[0], edge_extension={"learning_rate": 3}, optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [1e-4, 3e-4]})})
  out = run(spec, tmp_path)
  attempts, results = by_lr(str(tmp_path / "results.sqlite"))
  assert sorted(lr for lr, _ in results) == pytest.approx([1e-4, 3e-4, 9e-4, 2.7e-3, 8.1e-3])
  assert out.launched == 5
  best = min(results.values(), key=lambda r: r.objective)
  assert best.hparams["learning_rate"] == pytest.approx(2.7e-3)
  # Rerunning launches nothing: the extension is replayed from the store.
  assert run(spec, tmp_path).launched == 0


def test_edge_extension_needs_a_numeric_grid(tmp_path):
  spec = make_sweep(seeds=[0], edge_extension={"b2": 1}, optimizers={"adamw": dict(
      baseline={"learning_rate": 1e-3}, grid={"b2": [0.95, "auto"]})})
  with pytest.raises(ValueError, match="edge_extension names 'b2'"):
    run(spec, tmp_path, launcher=never_launch)


def test_a_trial_still_running_elsewhere_is_not_started_twice(tmp_path, monkeypatch):
  """A trial left running (e.g. by a dead driver on an OS without
  PR_SET_PDEATHSIG) holds its workdir lock; the rerun waits, then leaves it alone."""
  from optbench_jax import workdir_lock  # pylint: disable=import-outside-toplevel
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [1e-3]})})
  monkeypatch.setenv("FAKE_PREEMPT_AT", "7")
  assert len(run(spec, tmp_path).interrupted) == 1
  monkeypatch.delenv("FAKE_PREEMPT_AT")
  (trial_dir,) = (tmp_path / "trials").iterdir()
  monkeypatch.setattr(trial_process, "LIVE_TRIAL_WAIT_S", 0.3)
  logged = []
  with workdir_lock.WorkdirLock(str(trial_dir), "trainer", log=logged.append):
    out = sweep.run_sweep(spec, str(tmp_path), poll_interval_s=0.02, log=logged.append,
                          launcher=fake_launcher)
  assert out.launched == 0 and out.interrupted == [trial_dir.name]
  assert any(f"still running as pid {os.getpid()}" in line for line in logged), logged
  assert run(spec, tmp_path).recorded["completed"] == 1   # once it is gone, it resumes


def test_a_failed_trial_shows_the_trainers_error_line_not_its_command(tmp_path):
  """The console names why a trial failed."""
  spec = make_sweep(seeds=[0], optimizers={"adamw": dict(
      baseline={"b2": 0.95}, grid={"learning_rate": [0.5]})})
  logged = []
  out = sweep.run_sweep(spec, str(tmp_path), poll_interval_s=0.02, log=logged.append,
                        launcher=fake_launcher)
  assert out.recorded["failed"] == 1
  (line,) = [l for l in logged if ": failed" in l]
  assert line.endswith("(exit code 1; log tail:: fake trainer: simulated crash)"), line


def test_a_second_driver_and_a_bad_corpus_are_refused_before_any_trial(tmp_path):
  from optbench_jax import workdir_lock  # pylint: disable=import-outside-toplevel
  with workdir_lock.WorkdirLock(str(tmp_path), "sweep driver"):
    with pytest.raises(workdir_lock.WorkdirLockedError, match="in use by sweep driver pid"):
      run(make_sweep(), tmp_path, launcher=never_launch)
  spec = make_sweep()
  spec["overrides"].update({"data.source": "shards", "data.path": str(tmp_path)})
  with pytest.raises(sweep_config.SweepConfigError, match="trials of adamw: config.data: shard directory"):
    run(spec, tmp_path / "other", launcher=never_launch)
  with pytest.raises(sweep_config.SweepConfigError, match="--workdir is empty"):
    run(make_sweep(), "", launcher=never_launch)


def test_launching_trials_never_forks_a_copy_that_runs_python(tmp_path):
  """Trials start without a ``preexec_fn`` (the parent-death signal is set by
  ``optbench_jax.parent_death`` in the child), so JAX's "os.fork() was called ... will
  likely lead to a deadlock" warning cannot arise in the multithreaded driver."""
  import warnings  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  jax.devices()   # the driver is a multithreaded JAX process, as in `trainers.sweep`
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = run(make_sweep(seeds=[0]), tmp_path)
  assert out.launched >= 1
  forks = [str(w.message) for w in caught if "os.fork()" in str(w.message)]
  assert not forks, forks[0]
