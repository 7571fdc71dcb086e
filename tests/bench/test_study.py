"""Studies through the sweep runner with the fake trial command (tests/bench/fake_trainer.py).

Covers: tuning at the tuned size and carrying the best points to the others
(same, fit, local search), resume of a study killed mid-trial, --status of a
study, the report from a study's work directory, and bad study configs
refused before any trial starts. The real trainer runs a study in
test_study_smoke.py; a branched trial's bit-for-bit equality is
tests/train/test_branching.py's.
"""

import json

import pytest

from optbench_jax.bench import results_store as rs
from optbench_jax.bench import study, study_config, study_report, sweep, sweep_status
from optbench_jax.bench import transfer_rules
from tests.bench.test_sweep import fake_launcher, never_launch


def make_study(**changes):
  spec = dict(
      name="study-test", base_config="configs/tiny.py",
      overrides={"optimizer.schedule.warmup_steps": 2, "train.eval_every": 10,
                 "model.num_layers": 1, "data.seq_len": 16, "data.global_batch_size": 8},
      models={"small": {"overrides": {"model": {"d_model": 32, "num_heads": 2,
                                                "ffn_dim": 64}}},
              "large": {"overrides": {"model": {"d_model": 64, "num_heads": 4,
                                                "ffn_dim": 128}}}},
      budgets={"chinchilla": [0.005, 0.01]}, seeds=[0], evals_per_trial=4,
      reference_optimizer="adamw",
      divergence=dict(loss_threshold=6.0, after_steps=2000, after_fraction=0.25),
      speedup=dict(gamma="loss_floor", num_bootstrap=50),
      optimizers={"adamw": dict(baseline={"learning_rate": 1e-3, "b2": 0.95},
                                grid={"learning_rate": [1e-3, 3e-3, 1e-2]}),
                  "nadamw": dict(baseline={"learning_rate": 1e-3},
                                 grid={"learning_rate": [1e-3, 3e-3, 1e-2]})},
      plan=dict(tune=["small"], transfer="same", strategy="grid"),
      share_stable_phase=False)
  spec.update(changes)
  return spec


def run(spec, workdir, **kw):
  kw.setdefault("launcher", fake_launcher)
  return sweep.run_sweep(study.StudyProgram(spec), str(workdir), poll_interval_s=0.02,
                         log=lambda _: None, **kw)


def latest(workdir):
  with rs.ResultsStore.open_existing(str(workdir / "results.sqlite")) as store:
    return store.attempts(), store.latest()


def test_the_tuned_size_is_searched_and_its_best_point_carried(tmp_path):
  out = run(make_study(), tmp_path)
  assert out.recorded == {"completed": 20, "diverged": 0, "failed": 0}
  _, results = latest(tmp_path)
  small = [r for r in results if r.trial_id.startswith("small-")]
  large = [r for r in results if r.trial_id.startswith("large-")]
  # 2 optimizers x 2 budgets x 3 learning rates, and the reference's best point at the
  # smallest budget on the two noise seeds (one seed given).
  assert len(small) == 2 * 2 * 3 + 2 and len(large) == 2 * 2 + 2
  noise = sorted((r.trial_id.split("-")[0], r.seed) for r in results if r.seed > 0)
  assert noise == [("large", 1), ("large", 2), ("small", 1), ("small", 2)]
  # The fake's best learning rate is 10^-2.5: 3e-3 of the grid, carried unchanged.
  assert {r.hparams["learning_rate"] for r in large} == {3e-3}
  assert {r.budget_steps for r in large} == set(
      study.StudyProgram(make_study()).scale_map["large"]["sweep"]["budgets"])


def test_fit_transfer_and_local_search_around_the_carried_point(tmp_path):
  spec = make_study(
      models={f"w{d}": {"overrides": {"model": {"d_model": d, "num_heads": 2, "ffn_dim": 2 * d}}}
              for d in (16, 32, 64)},
      budgets={"chinchilla": [0.05, 0.1]},
      optimizers={"adamw": dict(baseline={"learning_rate": 1e-3},
                                grid={"learning_rate": [1e-3, 3e-3, 1e-2]})},
      plan=dict(tune=["w16", "w32"], transfer="fit", strategy="grid",
                local_search={"learning_rate": [0.5, 1, 2]}, local_trial_budget=3))
  run(spec, tmp_path)
  _, results = latest(tmp_path)
  carried = sorted(r.hparams["learning_rate"] for r in results
                   if r.trial_id.startswith("w64-") and r.seed == 0)
  # Every tuned cell picked 3e-3: the fit is flat, so the carried point is 3e-3 and the
  # local search tries half and double of it.
  assert carried == [1.5e-3, 1.5e-3, 3e-3, 3e-3, 6e-3, 6e-3]


def test_parametrization_transfer_anchors_every_model_at_the_tuned_width(tmp_path):
  """Under mup, every scale's trainer config gets base_width / base_depth of the tuned model
  and the tuned point is carried unchanged (the optimizer's rule scales it inside the run)."""
  spec = make_study(plan=dict(tune=["small"], transfer="parametrization", strategy="grid"))
  spec["overrides"] = dict(spec["overrides"], **{"model.parametrization": "mup"})
  program = study.StudyProgram(spec)
  for scale in program.scale_map.values():
    assert (scale["base"].model.base_width, scale["base"].model.base_depth) == (32, 1)
    assert scale["base"].model.parametrization == "mup"
  run(spec, tmp_path)
  _, results = latest(tmp_path)
  assert {r.hparams["learning_rate"] for r in results if r.trial_id.startswith("large-")} == {3e-3}


def test_a_fitted_law_recovers_a_planted_power_law():
  cells = [transfer_rules.TunedCell(n, 20 * k * n, k, {"learning_rate": 0.5 * n ** -0.5 * (
      20 * k * n) ** 0.1, "b2": 0.95, "warmup_steps": int(n / 1000)}) for n in (1e6, 4e6)
           for k in (1, 2, 4)]
  point, laws = transfer_rules.carry(cells, 1.6e7, 20 * 2 * 1.6e7, 2, "fit")
  truth = 0.5 * 1.6e7 ** -0.5 * (20 * 2 * 1.6e7) ** 0.1
  assert point["learning_rate"] == pytest.approx(truth, rel=1e-3)
  assert laws["learning_rate"].B == pytest.approx(-0.5 + 0.1, abs=1e-6) or \
      laws["learning_rate"].C == pytest.approx(0.1, abs=1e-6)
  assert point["b2"] == 0.95   # the same in every cell: carried unchanged
  assert point["warmup_steps"] == 16000 and isinstance(point["warmup_steps"], int)
  same, _ = transfer_rules.carry(cells, 1.6e7, 20 * 2 * 1.6e7, 2, "same")
  assert same == dict(cells[4].point)   # the largest tuned size, same multiple


def test_a_study_killed_mid_trial_resumes_without_duplicating_or_losing_a_trial(
    tmp_path, monkeypatch):
  reference = run(make_study(), tmp_path / "whole")
  monkeypatch.setenv("FAKE_PREEMPT_AT", "3")
  first = run(make_study(), tmp_path / "killed")
  assert first.interrupted and not first.recorded["completed"]
  monkeypatch.delenv("FAKE_PREEMPT_AT")
  second = run(make_study(), tmp_path / "killed")
  while second.interrupted:
    second = run(make_study(), tmp_path / "killed")
  attempts, results = latest(tmp_path / "killed")
  _, whole = latest(tmp_path / "whole")
  assert sorted(r.trial_id for r in results) == sorted(r.trial_id for r in whole)
  assert len(attempts) == len(results) == sum(reference.recorded.values())
  rows = sweep_status.collect(str(tmp_path / "killed"))[1]
  assert {r.state for r in rows} == {"completed"}
  assert {r.scale for r in rows} == {"small", "large"}


def test_status_of_a_study_replays_its_plan(tmp_path, monkeypatch):
  monkeypatch.setenv("FAKE_PREEMPT_AT", "3")
  run(make_study(), tmp_path)
  name, rows = sweep_status.collect(str(tmp_path))
  assert name == "study-test"
  # Nothing finished: only the tuned size's first proposals are known, all interrupted.
  assert {r.scale for r in rows} == {"small"} and {r.state for r in rows} == {"interrupted"}


def test_the_report_of_a_study_directory(tmp_path):
  run(make_study(seeds=[0, 1]), tmp_path)   # two seeds: no noise repeats
  paths = study_report.write_study_dir(str(tmp_path), num_bootstrap=20)
  data = json.loads((tmp_path / "study.json").read_text())
  assert str(tmp_path / "study_report.md") in paths
  for key in ("reference", "best", "speedup", "extrapolation", "rank_flips", "compute",
              "tuning_health", "significance"):
    assert key in data
  best = {(r["optimizer"], r["model"], r["chinchilla"]): r for r in data["best"]}
  assert len(best) == 2 * 2 * 2 and all(r["seeds"] == 2 for r in best.values())
  # The fake's nadamw needs half the tokens of adamw at the same loss (tests/bench/fake_trainer.py).
  assert data["compute"]["steps_trained"] == data["compute"]["steps_if_separate"] > 0
  health = [h for h in data["tuning_health"] if h["model"] == "small"]
  assert health and all(h["neighbours_run"] for h in health)


@pytest.mark.parametrize("change, message", [
    (dict(budgets={"chinchilla": [1, 0]}), "budgets.chinchilla must hold positive numbers"),
    (dict(budgets={"chinchilla": [1, -2]}), "budgets.chinchilla must hold positive numbers"),
    (dict(budgets=[1, 2]), "budgets must be {'chinchilla'"),
    (dict(models={"small": {"preset": "configs/no_such_size.py"}}),
     "models.small: config file 'configs/no_such_size.py' not found"),
    (dict(models={"small": {}}), "models.small must have a preset"),
    (dict(plan=dict(tune=[])), "plan.tune must name at least one model"),
    (dict(plan=dict(tune=["huge"])), "plan.tune names model(s) ['huge']"),
    (dict(plan=dict(tune=["small"], transfer="fit")), "needs tuned models of >= 2 sizes"),
    (dict(plan=dict(tune=["small"], transfer="µP")), "plan.transfer must be one of"),
    (dict(plan=dict(tune=["small"], transfer="parametrization")),
     "models.small: plan.transfer='parametrization' needs model.parametrization 'mup' or "
     "'completep'"),
    (dict(plan=dict(tune=["small", "large"], transfer="parametrization")),
     "carries from one tuned width and depth"),
    (dict(plan=dict(tune=["small"], warmup=3)), "plan has unknown field(s) ['warmup']"),
    (dict(param_count="embedding"), "param_count must be one of"),
    (dict(noise_seeds=[0]), "noise_seeds [0] repeat seeds [0]"),
])
def test_bad_study_configs_fail_before_any_trial(tmp_path, change, message):
  with pytest.raises(study_config.StudyConfigError) as error:
    run(make_study(**change), tmp_path, launcher=never_launch)
  assert message in str(error.value)
  assert not (tmp_path / "results.sqlite").exists()


def test_shorter_budgets_wait_for_the_longer_run_and_branch_from_it(tmp_path):
  spec = make_study(share_stable_phase=True)
  spec["overrides"]["optimizer.schedule.name"] = "wsd"
  program = study.StudyProgram(spec)
  cosine = study.StudyProgram(make_study(share_stable_phase=True))
  long_cosine = cosine.plan().propose(lambda t: None)[-1]
  assert cosine.config(long_cosine).train.keep_steps == []   # little more than the warmup
  budgets = program.scale_map["small"]["sweep"]["budgets"]
  plan = program.plan()
  trials = plan.propose(lambda t: None)
  short = next(t for t in trials if t.budget_steps == budgets[0])
  long = next(t for t in trials if t.budget_steps == budgets[1]
              and t.hparams == short.hparams and t.optimizer == short.optimizer)
  step = program.config(long).train.keep_steps[0]
  assert step * 2 >= budgets[0] and step < budgets[0]
  dirs = lambda tid: str(tmp_path / tid)
  assert program.order([short, long]) == [long, short]
  assert program.prepare(short, lambda tid: tid == long.trial_id,
                         dirs) is None                       # the longer run is on its way
  assert program.prepare(short, lambda tid: False, dirs) == {}   # nobody will get there
  marker = tmp_path / long.trial_id / "checkpoints" / str(step) / "commit_success.txt"
  marker.parent.mkdir(parents=True)
  marker.write_text("")
  assert program.prepare(short, lambda tid: True, dirs) == {
      "train.branch_from": str(tmp_path / long.trial_id), "train.branch_step": step}
