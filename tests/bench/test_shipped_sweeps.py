"""Every sweep config shipped in configs/sweeps loads and passes the pre-flight checks."""

import glob
import os

import pytest

from optbench_jax.bench import sweep_config, trial_preflight
from optbench_jax.optim import registry

SWEEPS = sorted(p for p in glob.glob(os.path.join(sweep_config.REPO_ROOT, "configs", "sweeps", "*.py"))
                if not p.endswith("__init__.py"))


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_shipped_sweep_config_is_valid(path):
  plain, base, fingerprint = sweep_config.load(sweep_config.load_python_config(path))
  trial_preflight.TrialChecker().check_grid(plain, base)   # the trainer accepts its grid
  assert len(fingerprint) == 64
  assert plain["reference_optimizer"] in plain["optimizers"]


def test_tiny_all_covers_every_registered_optimizer():
  path = os.path.join(sweep_config.REPO_ROOT, "configs", "sweeps", "tiny_all.py")
  plain, _, _ = sweep_config.load(sweep_config.load_python_config(path))
  assert sorted(plain["optimizers"]) == registry.builtin_names()
