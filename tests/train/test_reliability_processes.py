"""Reliability cases (kills, signals, stale locks) that need real, separate processes. SLOW: multi-second tests.

Each starts `python -m trainers.lm` / a sweep driver as a subprocess (about 5-10 s
each on 2 CPU cores; every wait is bounded): two trainers on one work directory,
a stale lock left by SIGKILL, a SIGKILLed sweep driver, a full disk (a small
tmpfs, root only), and the one-line errors of the command lines.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from optbench_jax import workdir_lock
from tests.bench import test_sweep
from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ)
  e["PYTHONPATH"] = REPO
  e["JAX_PLATFORMS"] = "cpu"
  e.pop("XLA_FLAGS", None)   # one CPU device, as the micro config's mesh expects
  e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return e


@pytest.fixture(scope="module")
def config_json(tmp_path_factory):
  """A 40-step micro run (checkpoints every 10) on a shared synthetic corpus."""
  root = tmp_path_factory.mktemp("configs")
  config = tiny.micro_config(root / "corpus", steps=40, checkpoint_every=10, log_every=5)
  path = root / "micro.json"
  path.write_text(json.dumps(config.to_dict()))
  return str(path)


def trainer(config_json, workdir, *flags):
  return [sys.executable, "-m", "trainers.lm",
          f"--config={REPO}/configs/from_json.py:{config_json}", f"--workdir={workdir}", *flags]


class Process(subprocess.Popen):
  """A child whose output goes to files (a full pipe would block a chatty trainer)."""

  def __init__(self, argv, env, cwd=REPO):
    import tempfile  # pylint: disable=import-outside-toplevel
    self.out_file, self.err_file = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    super().__init__(argv, env=env, cwd=cwd, stdout=self.out_file, stderr=self.err_file,
                     text=True)

  def outputs(self):
    texts = []
    for f in (self.out_file, self.err_file):
      f.seek(0)
      texts.append(f.read())
    return texts


def start(argv, env, cwd=REPO):
  return Process(argv, env, cwd)


def finish(process, timeout=TIMEOUT_S):
  process.wait(timeout=timeout)
  return (process.returncode, *process.outputs())


def call(argv, env, cwd=REPO):
  return finish(start(argv, env, cwd=cwd))


def wait_for(condition, timeout=60.0, what="condition"):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def last_line(text):
  return text.strip().splitlines()[-1] if text.strip() else ""


def train_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["step"] for r in map(json.loads, f) if "loss" in r]


def alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_a_second_trainer_on_a_live_workdir_is_refused(tmp_path, env, config_json):
  """Case 2: `T & sleep; T` on one workdir -- the second exits at once, the first is intact."""
  workdir = tmp_path / "w"
  first = start(trainer(config_json, workdir), env)
  try:
    wait_for(lambda: (workdir / workdir_lock.LOCK_NAME).exists(), what="the first trainer's lock")
    os.kill(first.pid, signal.SIGSTOP)   # keep it alive, mid-run, while the second starts
    code, _, err = call(trainer(config_json, workdir), env)
    os.kill(first.pid, signal.SIGCONT)
    assert code == 2, err
    assert last_line(err).startswith(f"error: work directory {workdir} is in use by trainer "
                                     f"pid {first.pid}"), err
    assert "Traceback" not in err
    code, out, err = finish(first)
  finally:
    first.kill()
  assert code == 0 and out.startswith("completed: 40 steps"), err
  assert train_steps(workdir) == list(range(5, 41, 5))   # in order, once each
  assert not (workdir / workdir_lock.LOCK_NAME).exists()   # released at exit


def test_a_stale_lock_of_a_killed_trainer_is_taken_over(tmp_path, env, config_json):
  workdir = tmp_path / "w"
  killed = start(trainer(config_json, workdir), env)
  wait_for(lambda: (workdir / workdir_lock.LOCK_NAME).exists(), what="the lock")
  killed.send_signal(signal.SIGKILL)
  killed.wait(timeout=30)
  assert (workdir / workdir_lock.LOCK_NAME).exists()   # left behind by SIGKILL
  code, out, err = call(trainer(config_json, workdir), env)
  assert code == 0 and out.startswith("completed: 40 steps"), err
  assert f"taking over the stale lock of {workdir}: trainer pid {killed.pid}" in err
  assert train_steps(workdir) == list(range(5, 41, 5))


SWEEP_DRIVER = textwrap.dedent("""
    import sys
    from optbench_jax.bench import sweep
    from tests.bench import test_sweep
    spec = test_sweep.make_sweep(seeds=[0], optimizers={"adamw": dict(
        baseline={"b2": 0.95}, grid={"learning_rate": [1e-3]})})
    sweep.run_sweep(spec, sys.argv[1], launcher=test_sweep.fake_launcher, poll_interval_s=0.05)
""")


def write_sweep_file(path, spec):
  """``spec`` (test_sweep.make_sweep) as a sweep config file for `python -m trainers.sweep`."""
  nested = {}
  for key, value in spec["overrides"].items():
    node = nested
    *parents, leaf = key.split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  path.write_text("import ml_collections\ndef get_config():\n"
                  f"  return ml_collections.ConfigDict({dict(spec, overrides=nested)!r})\n")


def _trial_pids(workdir):
  pids = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/cmdline", "rb") as f:
          cmdline = f.read().decode(errors="replace")
      except OSError:
        continue
      if "fake_trainer.py" in cmdline and str(workdir) in cmdline and alive(int(entry)):
        pids.append(int(entry))
  return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_the_sweep_driver_takes_its_trials_along(tmp_path, env):
  """Case 1: a SIGKILLed driver leaves no orphaned trial to be started twice by a rerun;
  a second driver on a live sweep is refused."""
  workdir = tmp_path / "sweep"
  driver_env = dict(env, FAKE_STEP_SLEEP="0.5")   # a 40-step trial then takes 20 s
  driver = start([sys.executable, "-c", SWEEP_DRIVER, str(workdir)], driver_env)
  try:
    wait_for(lambda: _trial_pids(workdir), timeout=60, what="the trial process")
    (trial,) = _trial_pids(workdir)
    spec_file = tmp_path / "spec.py"
    write_sweep_file(spec_file, test_sweep.make_sweep(seeds=[0]))
    code, _, err = call([sys.executable, "-m", "trainers.sweep", f"--config={spec_file}",
                         f"--workdir={workdir}"], env)
    assert code == 2 and last_line(err).startswith(
        f"error: work directory {workdir} is in use by sweep driver pid {driver.pid}"), err
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    wait_for(lambda: not alive(trial), timeout=10, what="the trial to die with its driver")
  finally:
    driver.kill()
    for pid in _trial_pids(workdir):
      os.kill(pid, signal.SIGKILL)


def test_disk_full_fails_with_one_line_and_the_last_checkpoint_resumes(tmp_path, env,
                                                                      config_json):
  """A full disk during a checkpoint save: exit 2 with `error: disk full`, no hang, the
  previous complete checkpoint kept; after freeing space the rerun finishes the run."""
  if os.geteuid() != 0:
    pytest.skip("needs root to mount a small tmpfs")
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode:
    pytest.skip("mount is not permitted here")
  try:
    free_kib = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize // 1024
    with open(mount / "filler", "wb") as f:   # room for about one checkpoint (~300 KiB)
      f.write(b"\0" * (free_kib - 450) * 1024)
    workdir = mount / "run"
    code, _, err = call(trainer(config_json, workdir), env)
    assert code == 2 and last_line(err).startswith("error: disk full: "), err[-2000:]
    complete = [s for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
    (mount / "filler").unlink()
    code, out, err = call(trainer(config_json, workdir), env)
    assert code == 0 and out.startswith("completed: 40 steps"), err[-2000:]
    assert train_steps(workdir) == list(range(5, 41, 5))
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_step"] == (max(map(int, complete)) if complete else None)
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_command_line_errors_are_one_line(tmp_path, env, config_json):
  """Case 14 (and 9, 12): `error: ...` as the last line, exit 2, no traceback."""
  (tmp_path / "a_file").write_text("")
  lm = [sys.executable, "-m", "trainers.lm"]
  cases = [
      (lm + ["--config.trian.steps=3", f"--workdir={tmp_path}/x"], REPO,
       'unknown config key \'trian\'; Did you mean "train"'),
      (lm + ["--config=configs/tiny.py", f"--workdir={tmp_path}/x"], str(tmp_path),
       "no config file 'configs/tiny.py' (a relative --config is resolved from the current "
       f"directory, {tmp_path})"),
      (trainer(config_json, tmp_path / "a_file"), REPO, "exists and is not a directory"),
      (trainer(config_json, ""), str(tmp_path), "--workdir is empty"),
  ]
  spec = test_sweep.make_sweep(seeds=[0])
  spec["overrides"].update({"data.source": "shards", "data.path": str(tmp_path / "nowhere")})
  spec_file = tmp_path / "bad_data.py"
  write_sweep_file(spec_file, spec)
  sweep = [sys.executable, "-m", "trainers.sweep", f"--config={spec_file}"]
  cases += [
      (sweep + [f"--workdir={tmp_path}/s1"], REPO, "data.path"),
      (sweep + [f"--workdir={tmp_path}/s2", "--parallel=0"], REPO, "--parallel must be >= 1"),
      ([sys.executable, "-m", "optbench_jax.bench.report", str(tmp_path / "missing")], REPO,
       "is not a directory"),
  ]
  for argv, cwd, message in cases:
    code, _, err = call(argv, env, cwd=cwd)
    assert code == 2, (argv, err[-2000:])
    assert last_line(err).startswith("error: ") and message in last_line(err), (argv, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
  assert sorted(os.listdir(tmp_path)) == ["a_file", "bad_data.py"]   # nothing created, no trial
