"""train.downstream: harness tasks on the live parameters at the run's evaluation points, equal to
``python -m optbench_jax.evaluate`` on the checkpoint; every bad setting fails before training."""

import json
import os
import subprocess
import sys

import pytest

from optbench_jax import train
from optbench_jax import workdir_files
from optbench_jax.config import ConfigError
from optbench_jax.evaluate import EvaluationError
from optbench_jax.evaluate import cli
from optbench_jax.evaluate import in_training
from tests.evaluate import text_runs
from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY, LIMIT = 4, 2, 6
TASKS = "tiny_mc,tiny_balanced"


def downstream_config(data_dir: str, task_dir: str, tasks: str = TASKS):
  c = text_runs.config(data_dir, steps=STEPS)
  c.train.downstream.update(tasks=tasks, every=EVERY, limit=LIMIT, include_path=task_dir)
  return c


@pytest.fixture(scope="module")
def downstream_run(tmp_path_factory, task_dir):
  """(work directory, summary) of a 4-step text run scoring two tasks at steps 2 and 4."""
  root = tmp_path_factory.getbasetemp() / "text_runs"
  config = downstream_config(text_runs.corpus(root), task_dir)
  workdir = str(tmp_path_factory.mktemp("downstream") / "run")
  summary = train.run(config, workdir, devices=tiny.one_device(),
                      downstream=in_training.DownstreamEvaluator(config))
  assert summary["status"] == "completed", summary
  return workdir, summary


def downstream_records(workdir: str) -> dict[int, dict]:
  return {r["step"]: {k: v for k, v in r.items() if k.startswith("downstream/")}
          for r in workdir_files.read_metrics(workdir)
          if any(k.startswith("downstream/") for k in r)}


def test_records_at_every_point_and_the_summary(downstream_run):
  workdir, summary = downstream_run
  records = downstream_records(workdir)
  assert sorted(records) == [EVERY, STEPS]
  for record in records.values():
    assert set(record) == {f"downstream/{t}/{m}" for t in TASKS.split(",")
                           for m in ("acc", "acc_norm")}
    assert all(0 <= v <= 1 for v in record.values())
  assert summary["downstream"] == {t: {m: records[STEPS][f"downstream/{t}/{m}"]
                                       for m in ("acc", "acc_norm")} for t in TASKS.split(",")}
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["downstream"] == summary["downstream"]


def test_equals_the_evaluate_command_on_the_final_checkpoint(downstream_run, task_dir):
  workdir, summary = downstream_run
  _, output = cli.evaluate(workdir, TASKS.split(","), task_dir, limit=LIMIT, bpb=False)
  assert output["optbench_jax"]["step"] == STEPS
  expected = in_training.main_metrics(output["results"])
  assert summary["downstream"] == expected   # ratios of LIMIT documents: the same choices


def test_main_metrics_keep_lm_eval_names():
  results = {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.5,
                       "exact_match_stderr,strict-match": 0.1, "exact_match,none": 0.25},
             "arc": {"alias": "arc", "acc,none": 0.5, "acc_stderr,none": "N/A"}}
  assert in_training.main_metrics(results) == {
      "gsm8k": {"exact_match,strict-match": 0.5, "exact_match": 0.25}, "arc": {"acc": 0.5}}


def test_an_unknown_task(task_dir, tmp_path):
  config = downstream_config(str(tmp_path), task_dir, tasks="tiny_mc,tiny_mcc")
  with pytest.raises(EvaluationError, match="unknown task 'tiny_mcc'") as info:
    in_training.DownstreamEvaluator(config)
  assert "\n" not in str(info.value)


def test_a_synthetic_vocabulary_model(task_dir, tmp_path):
  config = tiny.micro_config(str(tmp_path))
  config.train.downstream.update(tasks="tiny_mc", include_path=task_dir)
  with pytest.raises(EvaluationError, match=r"config.train.downstream: the model's vocabulary "
                     r"\(128\) is smaller than GPT-2's"):
    in_training.DownstreamEvaluator(config)


def test_tasks_without_an_evaluator_fail_before_the_workdir(task_dir, tmp_path):
  config = downstream_config(str(tmp_path / "data"), task_dir)
  with pytest.raises(ConfigError, match="no evaluator was passed to train.run"):
    train.run(config, str(tmp_path / "run"), devices=tiny.one_device())
  assert not (tmp_path / "run").exists()


def test_bad_values_are_config_errors(task_dir, tmp_path):
  config = downstream_config(str(tmp_path), task_dir)
  config.train.downstream.every = -1
  with pytest.raises(ConfigError, match=r"config.train.downstream.every must be an integer >= 0"):
    in_training.DownstreamEvaluator(config)


def test_the_trainer_fails_in_one_line_before_training(tmp_path):
  """A real ``trainers.lm`` process, offline with an empty Hugging Face cache: a task whose
  dataset is not cached is one ``error:`` line, and no work directory is created."""
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  text_runs.write_uncached_task(tasks)
  config = downstream_config(str(tmp_path / "data"), str(tasks), tasks="remote_mc")
  config_path = tmp_path / "config.json"
  config_path.write_text(json.dumps(config.to_dict()))
  env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_OFFLINE="1",
             HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "trainers.lm",
                           f"--config=configs/from_json.py:{config_path}",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert "task 'remote_mc'" in line and "not in the local datasets cache" in line
  assert result.stderr.rstrip().endswith(line)
  assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
