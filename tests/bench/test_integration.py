"""One micro sweep through the real trainer (trainers.lm): 2 trials of the tiny model, 10 steps.

Checks the contract end to end: the sweep writes config.json, the trainer
loads it through configs/from_json.py, writes metrics.jsonl/summary.json, the
runner records both trials, and the report renders from the store.
"""

import math
import os

from optbench_jax.bench import results_store, report, sweep

SPEC = dict(
    name="integration", base_config="configs/tiny.py",
    overrides={"optimizer": {"schedule": {"warmup_steps": 2}},
               "train": {"log_every": 5, "eval_every": 5, "eval_batches": 1,
                         "checkpoint_every": 10, "full_eval_at_end": False},
               "data": {"synthetic_train_tokens": 200_000, "synthetic_val_tokens": 20_000}},
    budgets=[10], seeds=[0], strategy="grid", speedup=dict(gamma="loss_floor", num_bootstrap=10),
    divergence=dict(loss_threshold=100.0, after_steps=2000, after_fraction=1.0),
    optimizers={"adamw": dict(baseline={"b1": 0.9, "b2": 0.99},
                              grid={"learning_rate": [1e-3, 1e-2]})})


def test_micro_sweep_through_real_trainer(tmp_path):
  out = sweep.run_sweep(SPEC, str(tmp_path), parallel=2, log=lambda _: None)
  assert out.recorded["completed"] == 2, out
  with results_store.ResultsStore.open_existing(str(tmp_path / "results.sqlite")) as store:
    results = store.latest()
  for r in results:
    assert r.steps == 10 and r.budget_tokens == 10 * 32 * 64
    assert math.isfinite(r.final_eval_loss) and r.final_eval_loss < math.log(512) + 0.5
    assert r.step_time_s > 0 and r.params > 0 and math.isfinite(r.loss_floor)
    assert r.eval_curve and r.eval_curve[-1][0] == 10
  md_path, _ = report.write_report(str(tmp_path), num_bootstrap=10)
  assert "| adamw |" in open(md_path).read()
  # Rerun: nothing launched again.
  assert sweep.run_sweep(SPEC, str(tmp_path), log=lambda _: None).launched == 0
  assert os.path.exists(tmp_path / "plots" / "speedup_vs_budget.png")
