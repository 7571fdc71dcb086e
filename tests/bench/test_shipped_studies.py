"""Every study config shipped in configs/studies loads, validates and proposes its first trials."""

import glob
import os

import pytest

from optbench_jax.bench import study, sweep_config, trial_preflight

STUDIES = sorted(p for p in glob.glob(os.path.join(sweep_config.REPO_ROOT, "configs", "studies",
                                                   "*.py")) if not p.endswith("__init__.py"))
SMALL = ("smoke.py", "cpu_mini.py")   # the trainer's own checks on every grid point: seconds


@pytest.mark.parametrize("path", STUDIES, ids=os.path.basename)
def test_shipped_study_config_is_valid(path):
  program = study.StudyProgram(sweep_config.load_python_config(path))
  first = program.plan().propose(lambda t: None)
  assert first and {t.scale for t in first} <= set(program.scale_map)
  assert all(program.scale_map[t.scale]["tuned"] for t in first)
  for trial in first:
    config = program.config(trial)
    assert config.train.steps == trial.budget_steps and config.optimizer.name
  if os.path.basename(path) in SMALL:
    checker = trial_preflight.TrialChecker()
    for _, plain, base in program.scales():
      checker.check_grid(plain, base)


def test_wen2025_counts_non_embedding_parameters_and_shares_stable_phases():
  path = os.path.join(sweep_config.REPO_ROOT, "configs", "studies", "wen2025.py")
  program = study.StudyProgram(sweep_config.load_python_config(path))
  small = program.scale_map["130m"]
  # 32 layers x (3 d ffn + 4 d^2) = 134,217,728 plus the RMSNorm scales (65 x 512).
  assert small["params"] == 134_217_728 + 65 * 512
  assert [round(k) for k in small["chinchilla"]] == [1, 2, 4, 8]
  trial = program.plan().propose(lambda t: None)[0]
  longest = max(small["sweep"]["budgets"])
  keep = program.config(type(trial)(trial.optimizer, trial.hparams, longest, 0, "130m")
                        ).train.keep_steps
  assert len(keep) == 3 and all(0.79 < s / b < 0.81 for s, b in
                                zip(keep, sorted(small["sweep"]["budgets"])[:3]))
