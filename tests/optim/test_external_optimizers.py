"""Optimizers from outside the package: import paths, entry points, ``register``, the contract."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

import optbench_jax.optim as O
from optbench_jax import train
from optbench_jax.optim import contract, registry
from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINE = "examples.my_optimizer:rms_adamw"

BAD_MODULE = textwrap.dedent('''
    import optax

    def fixed_lr(learning_rate, weight_decay=0.0):
        """Ignores the schedule it is given: always steps at 1e-3."""
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(1e-3))

    def no_weight_decay(learning_rate):
        return optax.sgd(learning_rate)
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  (tmp_path / "user_opts.py").write_text(BAD_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  return tmp_path


def test_import_path_resolves_everywhere_a_name_does():
  assert registry.factory(MINE).__name__ == "rms_adamw"
  assert isinstance(O.create(MINE, learning_rate=1e-3), optax.GradientTransformation)
  assert "batch_axes" in registry.hyperparameter_names(MINE)


@pytest.mark.parametrize("name,message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("examples.my_optimizer:nothing_here", "has no 'nothing_here'"),
])
def test_bad_import_paths_say_what_is_wrong(name, message):
  with pytest.raises(ValueError, match=message):
    O.create(name, learning_rate=1e-3)


def test_register_from_code():
  O.register("my_sgd", lambda learning_rate, weight_decay=0.0: optax.sgd(learning_rate))
  try:
    assert "my_sgd" in O.names() and "my_sgd" not in registry.builtin_names()
    assert isinstance(O.create("my_sgd", learning_rate=0.1), optax.GradientTransformation)
    with pytest.raises(ValueError, match="already registered"):
      O.register("my_sgd", optax.sgd)
    with pytest.raises(ValueError, match="already registered"):
      O.register("adamw", optax.sgd)
  finally:
    registry.unregister("my_sgd")
  assert "my_sgd" not in O.names()


def test_entry_point_plugin(tmp_path, monkeypatch):
  """A name an installed package registers in the ``optbench_jax.optimizers`` group."""
  (tmp_path / "plugin_opts.py").write_text(
      "import optax\n\ndef make(learning_rate, weight_decay=0.0):\n"
      "    return optax.sgd(learning_rate)\n")
  info = tmp_path / "plugin_opts-1.0.dist-info"
  info.mkdir()
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-opts\nVersion: 1.0\n")
  (info / "entry_points.txt").write_text(
      f"[{registry.ENTRY_POINT_GROUP}]\nplugin_sgd = plugin_opts:make\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert "plugin_sgd" in O.names()
  assert isinstance(O.create("plugin_sgd", learning_rate=0.1), optax.GradientTransformation)


def test_the_trainer_trains_an_import_path_optimizer(tmp_path):
  config = tiny.micro_config(tmp_path, steps=3)
  config.optimizer.update(name=MINE, learning_rate=1e-3)
  config.optimizer.hparams = {}
  run = train.build(config, tiny.one_device())
  state = run.create_state(seed=0)
  rng = np.random.default_rng(0)
  for _ in range(3):
    tokens = rng.integers(0, 128, size=(16, 17), dtype=np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    state, metrics = run.train_step(state, jax.device_put(batch, run.batch_sharding))
  assert np.isfinite(float(metrics.compute()["loss"]))


def test_the_example_passes_the_contract():
  results = contract.run_checks(registry.factory(MINE), {}, contract.FAST)
  assert all(r.passed for r in results), [(r.name, r.note) for r in results if not r.passed]


def test_the_contract_catches_a_learning_rate_that_ignores_the_schedule(user_module):
  results = {r.name: r for r in contract.run_checks(registry.factory("user_opts:fixed_lr"), {},
                                                    ["learning_rates_follow_schedule"])}
  check = results["learning_rates_follow_schedule"]
  assert not check.passed and "learning_rate has no effect" in check.note


def test_a_factory_that_raises_gives_its_reason_once(capsys):
  """Every check fails for the same reason: the table and a sweep's error line say it once."""
  def broken(learning_rate, weight_decay=0.0):
    raise ValueError("this factory always fails (a distinctive reason)")
  results = contract.run_checks(broken, {}, contract.FAST)
  assert not any(r.passed for r in results)
  assert contract.failure_summary(results).count("a distinctive reason") == 1
  from optbench_jax.optim import check  # pylint: disable=import-outside-toplevel
  check.print_table("broken", results)
  out = re.sub(r"[│┃\s]+", " ", capsys.readouterr().out)   # the table's folded cells, joined
  assert out.count("a distinctive reason") == 1
  assert out.count("the reason above") == len(results) - 1


def test_check_cli_prints_a_table_and_exits_by_result(user_module):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, str(user_module)]))
  good = subprocess.run([sys.executable, "-m", "optbench_jax.optim.check", MINE, "--tree=small"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert good.returncode == 0, good.stdout + good.stderr
  assert "10 passed, 0 failed" in good.stdout and "memory_and_speed" in good.stdout
  # each result is printed as its check finishes, before the table
  assert good.stdout.index("PASS returns_transformation:") < good.stdout.index("passed, 0 failed")
  bad = subprocess.run([sys.executable, "-m", "optbench_jax.optim.check", "user_opts:no_weight_decay",
                        "--skip=memory_and_speed"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 1 and "FAIL" in bad.stdout and "weight_decay" in bad.stdout
  unknown = subprocess.run([sys.executable, "-m", "optbench_jax.optim.check", "nope_nope"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown optimizer")
