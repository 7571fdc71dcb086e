"""The README's "Benchmark your own optimizer" example, end to end with the real trainer.

``examples/my_optimizer.py`` (a user's optax optimizer, named by its import path)
against AdamW and Muon, through ``examples/sweep_my_optimizer.py`` cut down to
two short budgets and one or two learning rates each, then the report.
"""

import pytest

from optbench_jax.bench import report, results_store, sweep, sweep_config
from tests.bench.test_sweep import never_launch

MINE = "examples.my_optimizer:rms_adamw"


def _small_example():
  c = sweep_config.load_python_config("examples/sweep_my_optimizer.py")
  plain = sweep_config._plain(c)   # pylint: disable=protected-access
  plain.update(budgets=[20, 40], tune_budgets=[20], edge_extension={})
  plain["overrides"] = {"optimizer": {"schedule": {"warmup_steps": 3}},
                        "train": {"log_every": 5, "eval_batches": 1, "checkpoint_every": 20,
                                  "full_eval_at_end": False},
                        "data": {"synthetic_train_tokens": 200_000, "synthetic_val_tokens": 20_000}}
  plain["optimizers"]["adamw"]["grid"] = {"learning_rate": [3e-3, 1e-2]}
  plain["optimizers"]["muon"]["grid"] = {"learning_rate": [1e-2], "adam_learning_rate": [1e-2]}
  plain["optimizers"][MINE]["grid"] = {"learning_rate": [1e-3, 3e-3]}
  return plain


def test_own_optimizer_swept_against_adamw_and_muon_with_the_report(tmp_path):
  out = sweep.run_sweep(_small_example(), str(tmp_path), parallel=2, log=lambda _: None)
  assert out.recorded["failed"] == 0, out
  with results_store.ResultsStore.open_existing(str(tmp_path / "results.sqlite")) as store:
    names = {r.optimizer for r in store.latest() if r.status == results_store.COMPLETED}
  assert names == {"adamw", "muon", MINE}
  md_path, _ = report.write_report(str(tmp_path), num_bootstrap=10)
  assert f"| {MINE} |" in open(md_path).read()


def test_a_sweep_refuses_an_optimizer_that_fails_the_contract(tmp_path, monkeypatch):
  (tmp_path / "user_opts.py").write_text(
      "import optax\n\ndef fixed_lr(learning_rate, weight_decay=0.0):\n"
      "    return optax.sgd(1e-3)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  plain = _small_example()
  plain["optimizers"] = {"adamw": plain["optimizers"]["adamw"],
                         "user_opts:fixed_lr": dict(grid={"learning_rate": [1e-3]})}
  with pytest.raises(sweep_config.SweepConfigError,
                     match="fails the optimizer contract.*learning_rates_follow_schedule"):
    sweep.run_sweep(plain, str(tmp_path / "sweep"), launcher=never_launch, log=lambda _: None)
