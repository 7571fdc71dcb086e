"""Studies with the real trainer: the smoke study end to end, and the stable-phase saving."""

import json
import os
import subprocess
import sys

import pytest

from optbench_jax.bench import study, study_results, sweep
from optbench_jax.train import branching

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def micro_study(budget_steps, **changes):
  """One micro Llama, AdamW at one point, WSD with a 20% decay, budgets in steps."""
  spec = dict(
      name="saving", base_config="configs/tiny.py",
      overrides={"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2,
                 "model.ffn_dim": 64, "model.vocab_size": 128,
                 "data.seq_len": 16, "data.global_batch_size": 16, "data.prefetch_threads": 0,
                 "data.synthetic_vocab_size": 128, "data.synthetic_train_tokens": 60_000,
                 "data.synthetic_val_tokens": 2_000,
                 "optimizer.schedule.name": "wsd", "optimizer.schedule.warmup_steps": 4,
                 "optimizer.schedule.decay_fraction": 0.2,
                 "optimizer.schedule.final_fraction": 0.0,
                 "train.log_every": 10, "train.eval_batches": 1,
                 "train.full_eval_at_end": False, "train.checkpoint_every": 0,
                 "mesh.data": -1},
      models={"micro": {"overrides": {}}},
      budgets={"tokens": [steps * 256 for steps in budget_steps]}, seeds=[0],
      reference_optimizer="adamw", speedup=dict(gamma="loss_floor", num_bootstrap=20),
      optimizers={"adamw": dict(grid={"learning_rate": [3e-3]})},
      plan=dict(tune=["micro"], strategy="grid"), share_stable_phase=True, noise_seeds=[])
  spec.update(changes)
  return spec


def test_the_smoke_study_runs_end_to_end_and_reports(tmp_path):
  workdir = tmp_path / "smoke"
  command = [sys.executable, "-m", "trainers.study", "--config=configs/studies/smoke.py",
             f"--workdir={workdir}", "--parallel=2"]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  data = json.loads((workdir / "study.json").read_text())
  assert {(r["optimizer"], r["model"]) for r in data["best"]} == {
      (o, m) for o in ("adamw", "lion") for m in ("w32", "w64")}
  assert all(r["final_loss"] is not None for r in data["best"])
  # One seed: the reference's best point at each width's smallest budget ran on two more
  # seeds, and the report measured the seed noise from them.
  assert data["noise_sigma"] is not None and data["noise_sigma"] > 0
  assert {r["seeds"] for r in data["best"] if r["optimizer"] == "adamw"} == {1, 3}
  # The 0.25x trials of every point start from the 0.5x run's stable phase.
  assert 0 < data["compute"]["steps_trained"] < data["compute"]["steps_if_separate"]
  for name in ("study_report.md", "study_report.html", "plots/speedup_vs_size.png",
               "plots/d_eff_vs_d.png", "plots/rank_flips.png"):
    assert (workdir / name).exists(), name
  status = subprocess.run([sys.executable, "-m", "trainers.study", f"--workdir={workdir}",
                           "--status"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert status.returncode == 0 and "done 16 (16 completed" in status.stdout, status.stdout


def test_shared_stable_phases_train_what_the_formula_says(tmp_path):
  """Budgets 1, 2, 4, 8 units with a 20% WSD decay: the longest run trains 8 units, each
  shorter one only its decay, 8 + 0.2 (1 + 2 + 4) = 9.4 units instead of 15."""
  unit = 40
  spec = micro_study([k * unit for k in (1, 2, 4, 8)])
  program = study.StudyProgram(spec)
  out = sweep.run_sweep(program, str(tmp_path), parallel=2, poll_interval_s=0.1,
                        log=lambda _: None)
  assert out.recorded["completed"] == 4
  compute = study_results.collect(str(tmp_path))["compute"]
  budgets = [k * unit for k in (1, 2, 4, 8)]
  trial = program.plan().propose(lambda t: None)[0]
  configs = {b: program._plain_config(trial, b) for b in budgets}   # pylint: disable=protected-access
  shared = [branching.shared_steps(configs[b], configs[8 * unit]) for b in budgets[:3]]
  assert compute == {"steps_trained": 8 * unit + sum(b - s for b, s in zip(budgets, shared)),
                     "steps_if_separate": 15 * unit}
  assert compute["steps_trained"] / compute["steps_if_separate"] == pytest.approx(9.4 / 15,
                                                                                 abs=0.01)
