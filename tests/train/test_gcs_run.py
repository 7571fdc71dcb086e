"""The trainer with its work directory (and corpus) in gs://, against the local GCS emulator.

Covers: a run from start to finish with summary, metrics, checkpoints and plot
in the bucket, reading a gs:// corpus, equal to the same run on local disk; a
real ``python -m trainers.lm`` SIGTERMed mid-run and resumed, continuing as an
uninterrupted run does; the workdir lock on gs://; and the one-line errors.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from optbench_jax import data as data_lib
from optbench_jax import storage
from optbench_jax import train
from optbench_jax import workdir_lock
from optbench_jax.train import metrics as metrics_lib
from optbench_jax.config import ConfigError
from tests.train import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def losses(workdir):
  return [r["loss"] for r in metrics_lib.read_records(storage.join(workdir, "metrics.jsonl"))
          if "loss" in r]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, gcs):
  """A small synthetic corpus, locally and uploaded to gs://."""
  local = str(tmp_path_factory.mktemp("corpus"))
  config = tiny.micro_config(local)
  d = config.data
  data_lib.write_synthetic_corpus(local, vocab_size=d.synthetic_vocab_size,
                                  branching=d.synthetic_branching, seed=d.synthetic_seed,
                                  train_tokens=d.synthetic_train_tokens,
                                  val_tokens=d.synthetic_val_tokens)
  url = storage.join(gcs(), "corpus")
  for name in sorted(os.listdir(local)):
    storage.upload(os.path.join(local, name), storage.join(url, name))
  return local, url


def test_a_run_in_gs_matches_the_same_run_on_local_disk(tmp_path, gcs, corpus):
  local_corpus, corpus_url = corpus
  config = tiny.micro_config(local_corpus, steps=6, checkpoint_every=3, eval_every=3)
  config.data.source = "shards"
  local = train.run(config, str(tmp_path / "local"), devices=tiny.one_device())
  config.data.path = corpus_url
  workdir = storage.join(gcs(), "run")
  remote = train.run(config, workdir, devices=tiny.one_device())
  assert remote["status"] == local["status"] == "completed"
  assert remote["workdir"] == workdir
  assert losses(workdir) == losses(tmp_path / "local") and len(losses(workdir)) == 6
  assert remote["final_eval_loss"] == local["final_eval_loss"]
  names = set(storage.listdir(workdir))
  assert {"summary.json", "metrics.jsonl", "run_record.json", "loss_curve.png",
          "checkpoints"} <= names and ".lock" not in names
  assert storage.read_json(storage.join(workdir, "summary.json"))["status"] == "completed"
  assert storage.read_bytes(storage.join(workdir, "loss_curve.png"))[:4] == b"\x89PNG"
  assert {"3", "6"} <= set(storage.listdir(storage.join(workdir, "checkpoints")))
  # A rerun of the finished run reports it unchanged (resumes from the gs:// checkpoint).
  again = train.run(config, workdir, devices=tiny.one_device())
  assert again["final_eval_loss"] == remote["final_eval_loss"]
  # The corpus was fetched once into the host-local cache, verified.
  cache = storage.local_cache_dir(corpus_url, "corpora")
  assert sorted(f for f in os.listdir(cache) if f.endswith(".bin")) == sorted(
      f for f in os.listdir(local_corpus) if f.endswith(".bin"))


def test_a_live_lock_in_gs_refuses_a_second_trainer_and_a_dead_one_is_taken_over(gcs, tmp_path):
  workdir = gcs()
  lock = workdir_lock.for_directory(workdir, "trainer", heartbeat_s=0.2).acquire()
  try:
    assert workdir_lock.read_holder(workdir)["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLockedError, match="in use by trainer pid"):
      workdir_lock.for_directory(workdir, "trainer").acquire()
    time.sleep(0.5)   # heartbeats rewrite the object under its generation
  finally:
    lock.release()
  assert workdir_lock.read_holder(workdir) is None
  assert not storage.exists(storage.join(workdir, ".lock"))
  # A lock left by a dead process of this host is stale at once.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  storage.write_json(storage.join(workdir, ".lock"), dict(
      pid=dead.pid, host=__import__("socket").gethostname(), role="trainer",
      started=time.time(), heartbeat=time.time()))
  messages = []
  taken = workdir_lock.for_directory(workdir, "trainer", log=messages.append).acquire()
  try:
    assert taken.took_over["pid"] == dead.pid and "taking over the stale lock" in messages[0]
  finally:
    taken.release()


def test_bad_gs_workdirs_fail_with_one_clear_error(gcs, tmp_path):
  config = tiny.micro_config(str(tmp_path / "corpus"), steps=2)
  with pytest.raises(ConfigError, match="bucket gs://no-such-bucket does not exist"):
    train.run(config, "gs://no-such-bucket/run", devices=tiny.one_device())
  config.data.update(source="shards", path=storage.join(gcs(), "nothing-here"))
  with pytest.raises(ConfigError, match="is not a directory"):
    train.run(config, storage.join(gcs(), "run"), devices=tiny.one_device())


@pytest.mark.slow
def test_sigterm_in_gs_then_resume_continues_identically(tmp_path, gcs, corpus):
  local_corpus, corpus_url = corpus
  config = tiny.micro_config(local_corpus, steps=120, checkpoint_every=10, log_every=5)
  config.data.update(source="shards", path=corpus_url)
  config_json = tmp_path / "config.json"
  config_json.write_text(json.dumps(config.to_dict()))
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)   # one CPU device, as the micro config's mesh expects
  workdir = storage.join(gcs(), "run")
  argv = [sys.executable, "-m", "trainers.lm",
          f"--config={REPO}/configs/from_json.py:{config_json}", f"--workdir={workdir}"]
  log = open(tmp_path / "first.log", "w+")
  process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 120
    checkpoints = storage.join(workdir, "checkpoints")
    while not (storage.exists(storage.join(checkpoints, "10", "commit_success.txt")) or
               process.poll() is not None):
      assert time.time() < deadline, "no checkpoint within 120 s"
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, open(tmp_path / "first.log").read()[-3000:]
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  stopped = storage.read_json(storage.join(workdir, "summary.json"))
  assert stopped["status"] == "preempted" and 10 <= stopped["steps"] < 110, stopped
  resumed = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  summary = storage.read_json(storage.join(workdir, "summary.json"))
  assert summary["status"] == "completed" and summary["resumed_from_step"] == stopped["steps"]
  # The same run, uninterrupted (in this process, on one device): every record after the
  # first one past the stop is identical (a record averages since the previous one).
  full = train.run(config, str(tmp_path / "full"), devices=tiny.one_device())
  assert full["status"] == "completed"
  records = [r for r in metrics_lib.read_records(storage.join(workdir, "metrics.jsonl"))
             if "loss" in r]
  reference = {r["step"]: r["loss"] for r in metrics_lib.read_records(
      str(tmp_path / "full" / "metrics.jsonl")) if "loss" in r}
  # The stopped process also logged at its stop step (not a multiple of log_every).
  steps = {r["step"] for r in records}
  assert set(reference) <= steps and steps - set(reference) <= {stopped["steps"]}
  after = [r for r in records if r["step"] > stopped["steps"]][1:]
  assert after and all(r["loss"] == pytest.approx(reference[r["step"]], rel=1e-6) for r in after)
