"""The package's layers and its import graph, as import-linter contracts (pyproject.toml).

entry points (trainers) > configs > bench > train > config > models, data > optim:
a lower layer never imports a higher one, the optimizer library imports only
jax, optax, numpy and itself, and no sibling modules import each other in a circle.
"""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint(root: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=root)
  return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                         "lint_imports_command()", "--config", os.path.join(root, "pyproject.toml"),
                         "--no-cache"],
                        cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
  result = _lint(REPO)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  assert "4 kept, 0 broken" in result.stdout


def test_a_back_arrow_breaks_the_contracts(tmp_path):
  """The optimizer library importing the trainer is caught (the check can fail)."""
  for name in ("optbench_jax", "configs", "trainers"):
    shutil.copytree(os.path.join(REPO, name), tmp_path / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
  labels = tmp_path / "optbench_jax" / "optim" / "labels.py"
  labels.write_text(labels.read_text() + "\nfrom optbench_jax.train import state  # noqa\n")
  result = _lint(str(tmp_path))
  assert result.returncode != 0
  assert "optbench_jax.optim.labels -> optbench_jax.train.state" in result.stdout
