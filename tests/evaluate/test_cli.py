"""python -m optbench_jax.evaluate: W/evals/<step>.json in the harness's format, the table, and
one ``error:`` line for each input a user can get wrong."""

import json
import os
import shutil
import subprocess
import sys

from optbench_jax import cli_errors
from optbench_jax.evaluate import cli
from tests.evaluate import text_runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
  status = cli_errors.run(cli.main, argv, verbose=False)
  out, err = capsys.readouterr()
  return status, out, err


def error_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if line.startswith("error:")]


def bare_workdir(text_workdir: str, tmp_path) -> str:
  """A work directory with the run's record and no checkpoint."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  shutil.copy(os.path.join(text_workdir, "run_record.json"), workdir)
  return str(workdir)


def test_writes_the_results_and_prints_the_table(text_workdir, task_dir, capsys):
  status, out, _ = run_main([f"--workdir={text_workdir}", "--tasks=tiny_mc",
                             f"--include_path={task_dir}", "--limit=8", "--batch_size=16"],
                            capsys)
  assert status == 0
  path = os.path.join(text_workdir, "evals", "3.json")
  with open(path, encoding="utf-8") as f:
    results = json.load(f)
  assert results["n-samples"]["tiny_mc"] == {"original": 20, "effective": 8}
  assert {"acc,none", "acc_norm,none", "acc_stderr,none"} <= set(results["results"]["tiny_mc"])
  assert {"configs", "versions", "n-shot", "higher_is_better", "config"} <= set(results)
  assert "samples" not in results
  validation = results["validation"]
  assert validation["sequences"] == 8 and validation["bits_per_byte"] > 0
  assert results["optbench_jax"] == {"workdir": text_workdir, "step": 3, "tasks": ["tiny_mc"],
                                     "limit": 8}
  assert "|tiny_mc|" in out.replace(" ", "") and "bits/byte" in out and path in out


def test_bits_per_byte_alone(text_workdir, capsys):
  status, out, _ = run_main([f"--workdir={text_workdir}", "--step=3", "--limit=2"], capsys)
  assert status == 0 and "bits/byte" in out
  with open(os.path.join(text_workdir, "evals", "3.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert set(results) == {"validation", "optbench_jax"}


def test_an_unknown_task_names_the_closest(text_workdir, task_dir, capsys):
  status, _, err = run_main([f"--workdir={text_workdir}", "--tasks=tiny_mcc",
                             f"--include_path={task_dir}"], capsys)
  assert status == 2
  [line] = error_lines(err)
  assert "unknown task 'tiny_mcc'" in line and "tiny_mc" in line.split("closest")[1]
  assert err.rstrip().endswith(line)


def test_a_dataset_not_cached_offline(text_workdir, tmp_path):
  """A real process, offline, with an empty Hugging Face cache."""
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  text_runs.write_uncached_task(tasks)
  env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_OFFLINE="1",
             HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "optbench_jax.evaluate",
                           f"--workdir={text_workdir}", "--tasks=remote_mc",
                           f"--include_path={tasks}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = error_lines(result.stderr)
  assert "task 'remote_mc'" in line and "not in the local datasets cache" in line
  assert "--include_path" in line and result.stderr.rstrip().endswith(line)


def test_a_workdir_without_checkpoint(text_workdir, task_dir, tmp_path, capsys):
  workdir = bare_workdir(text_workdir, tmp_path)
  status, _, err = run_main([f"--workdir={workdir}", "--tasks=tiny_mc",
                             f"--include_path={task_dir}"], capsys)
  assert status == 2
  [line] = error_lines(err)
  assert "holds no checkpoint" in line


def test_an_unwritable_output_directory(text_workdir, tmp_path, capsys):
  workdir = bare_workdir(text_workdir, tmp_path)
  with open(os.path.join(workdir, "evals"), "w", encoding="utf-8") as f:
    f.write("a file where the results directory should be")
  status, _, err = run_main([f"--workdir={workdir}", "--tasks=tiny_mc"], capsys)
  assert status == 2
  [line] = error_lines(err)
  assert line.startswith(f"error: cannot write the results to {workdir}/evals")


def test_not_a_work_directory(tmp_path, capsys):
  status, _, err = run_main([f"--workdir={tmp_path / 'missing'}", "--tasks=tiny_mc"], capsys)
  assert status == 2 and "is not a training work directory" in error_lines(err)[0]
  assert not (tmp_path / "missing").exists()
