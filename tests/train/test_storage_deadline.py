"""train/storage_deadline.py: a gs:// trainer whose storage stops answering exits in time.

A real ``python -m trainers.lm`` on the micro config writes to an emulator of the
test's own, which the test freezes mid-run (SIGSTOP: storage that hangs) and
then SIGTERMs the trainer: it exits within the deadline with one ``error:`` line
and status 3, and after the emulator thaws, a rerun resumes from the checkpoint
the line names.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from optbench_jax import cli_errors
from optbench_jax import config as config_lib
from optbench_jax import data as data_lib
from optbench_jax import storage
from optbench_jax.train import checkpoint as checkpoint_lib
from optbench_jax.train import storage_deadline
from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE_S = 3
# Past the deadline: reaching the next save or metrics upload (a few steps), the watchdog's poll,
# and the 2 shared cores of the test machine.
MARGIN_S = 7


def _trainer(tmp_path, emulator, workdir, **train):
  """(argv, env) of a trainer on the micro config with a local corpus and ``workdir``."""
  corpus = str(tmp_path / "corpus")
  config = tiny.micro_config(corpus, **train)
  d = config.data
  data_lib.write_synthetic_corpus(corpus, vocab_size=d.synthetic_vocab_size,
                                  branching=d.synthetic_branching, seed=d.synthetic_seed,
                                  train_tokens=d.synthetic_train_tokens,
                                  val_tokens=d.synthetic_val_tokens)
  config.data.source = "shards"
  config_json = tmp_path / "config.json"
  config_json.write_text(json.dumps(config.to_dict()))
  env = dict(os.environ, **emulator.env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)   # one CPU device, as the micro config's mesh expects
  argv = [sys.executable, "-m", "trainers.lm",
          f"--config={REPO}/configs/from_json.py:{config_json}", f"--workdir={workdir}"]
  return argv, env


def test_frozen_storage_ends_the_trainer_within_the_deadline_and_a_rerun_resumes(tmp_path,
                                                                                 own_gcs):
  workdir = "gs://test-bucket/run"
  argv, env = _trainer(tmp_path, own_gcs, workdir, steps=200, checkpoint_every=10, log_every=5,
                       storage_timeout_s=float(DEADLINE_S))
  log_path = tmp_path / "first.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  try:
    started = time.time()
    while not (checkpoint_lib.is_complete(workdir, 20) or process.poll() is not None):
      assert time.time() < started + 120, "no checkpoint 20 within 120 s"
      time.sleep(0.2)
    assert process.poll() is None, log_path.read_text()[-3000:]
    own_gcs.freeze()
    frozen = time.monotonic()
    time.sleep(0.5)   # the trainer reaches its next wait on storage
    process.send_signal(signal.SIGTERM)
    try:
      code = process.wait(timeout=DEADLINE_S + MARGIN_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f"the trainer still runs {DEADLINE_S + MARGIN_S} s after storage froze "
                  f"(deadline {DEADLINE_S} s):\n{log_path.read_text()[-3000:]}")
    took = time.monotonic() - frozen
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
    own_gcs.thaw()
  output = log_path.read_text()
  assert code == cli_errors.STORAGE_UNAVAILABLE, output[-3000:]
  assert took >= DEADLINE_S   # it waited out the deadline, not less
  assert "received signal 15" in output and "Traceback" not in output, output[-3000:]
  errors = [line for line in output.splitlines() if "error:" in line]
  assert len(errors) == 1 and output.strip().splitlines()[-1] == errors[0], output[-3000:]
  found = re.fullmatch(rf"error: storage {workdir} did not answer within {DEADLINE_S} s while "
                       r"(.+); the last checkpoint known to be committed is step (\d+); rerun to "
                       "resume", errors[0])
  assert found, errors[0]
  # What the trainer knew: the newest save it waited for or saw finish. (Checkpoint 20 may have
  # committed after its last look: the test froze storage as soon as the marker appeared.)
  committed = int(found.group(2))
  assert committed >= 10 and checkpoint_lib.is_complete(workdir, committed)
  checkpoints = storage.join(workdir, "checkpoints")
  newest = max(int(s) for s in storage.listdir(checkpoints)
               if s.isdigit() and checkpoint_lib.is_complete(workdir, int(s)))
  assert committed <= newest < committed + 20

  # The thawed storage holds the committed checkpoints intact; the rerun takes the dead
  # process's lock over and resumes from the newest one.
  resumed = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "taking over the stale lock" in resumed.stderr
  summary = storage.read_json(storage.join(workdir, "summary.json"))
  assert summary["status"] == "completed" and summary["steps"] == 200
  assert summary["resumed_from_step"] == newest, (committed, newest, summary)


def test_the_deadline_must_end_before_the_lock_goes_stale():
  config = config_lib.base_config()
  config.train.storage_timeout_s = 241.0
  with pytest.raises(config_lib.ConfigError, match=r"storage_timeout_s must be a number of "
                     r"seconds in \(0, 240\], got 241.0: .* after its last renewal"):
    config_lib.check_values(config)
  config.train.storage_timeout_s = 0
  with pytest.raises(config_lib.ConfigError, match="storage_timeout_s"):
    config_lib.check_values(config)


def test_storage_failures_are_told_from_answers():
  assert storage_deadline.is_storage_failure(ConnectionRefusedError(111, "refused"))
  assert storage_deadline.is_storage_failure(TimeoutError())
  assert storage_deadline.is_storage_failure(ValueError("UNAVAILABLE: HTTP 503 from GCS"))
  try:
    try:
      raise ConnectionResetError("reset")
    except ConnectionResetError as e:
      raise RuntimeError("orbax save failed") from e
  except RuntimeError as wrapped:
    assert storage_deadline.is_storage_failure(wrapped)
  assert not storage_deadline.is_storage_failure(FileNotFoundError("no such object"))
  assert not storage_deadline.is_storage_failure(PermissionError("forbidden"))
  assert not storage_deadline.is_storage_failure(ValueError("shapes differ"))
