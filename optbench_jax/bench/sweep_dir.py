"""The files of a sweep's work directory: names, paths, and the store's copy in a bucket.

A sweep directory (local or ``gs://``) holds ``sweep.json`` (the validated
sweep, its base config and fingerprint, written when the driver starts),
``results.sqlite`` (the results store) and ``trials/<trial id>/``, each an
ordinary trainer work directory (``workdir_files``) plus the trial's
``config.json`` and ``trial.log`` (``trial.<host>.log`` for the other hosts of
a multi-host trial).

A ``gs://`` sweep: SQLite needs a local file with working locks, so the driver
keeps the store in a host-local cache directory keyed by the sweep's URL
(``storage.local_cache_dir(url, "sweeps")``), downloads the bucket's copy over
it when it starts (the bucket is the truth: a rerun on another host resumes
from it) and uploads it after every recorded result (an all-or-nothing object
upload, after SQLite's commit). The trials' ``config.json`` and ``trial.log``
are written in the cache too (the launcher reads the config from there; a log
is a stream) and uploaded into the trial's directory in the bucket. Readers
(status, report) read a fresh download of the store (:func:`store_path`).
"""

from __future__ import annotations

import os
from typing import Any

from optbench_jax import storage
from optbench_jax.bench import results_store

SNAPSHOT = "sweep.json"
TRIALS = "trials"
COMPILATION_CACHE = "jax_cache"
STORE = results_store.STORE_FILENAME


def snapshot_path(workdir: str) -> str:
  return storage.join(workdir, SNAPSHOT)


def trial_dir(workdir: str, trial_id: str) -> str:
  """The trial's own work directory (the trainer's ``--workdir``)."""
  return storage.join(workdir, TRIALS, trial_id)


def read_snapshot(workdir: str) -> dict[str, Any]:
  """``sweep.json``; FileNotFoundError when ``workdir`` holds no sweep."""
  path = snapshot_path(workdir)
  if not storage.exists(path):
    raise FileNotFoundError(f"{workdir} holds no sweep (no {SNAPSHOT})")
  return storage.read_json(path)


def has_store(workdir: str) -> bool:
  return storage.exists(storage.join(workdir, STORE))


def store_path(workdir: str, cache: str = "reports") -> str:
  """A local path to the sweep's results store: the file itself, or for a ``gs://`` sweep a
  fresh download of the bucket's copy into the host-local cache (SQLite reads local files)."""
  path = storage.join(workdir, STORE)
  if not storage.is_remote(workdir):
    return path
  if not storage.exists(path):
    raise FileNotFoundError(f"no results store at {path}")
  local = os.path.join(storage.local_cache_dir(workdir, cache), STORE)
  storage.download(path, local)
  return local


class SweepDirectory:
  """The driver's view of one sweep directory: where each file is written, and the store's
  mirror in a bucket (see the module docstring)."""

  def __init__(self, workdir: str):
    self.workdir = storage.resolve(workdir)
    self.remote = storage.is_remote(self.workdir)
    # Where the SQLite store, trial configs and trial logs are written.
    self.local_dir = (storage.local_cache_dir(self.workdir, "sweeps") if self.remote
                      else self.workdir)
    self.store_url = storage.join(self.workdir, STORE)
    self.local_store = os.path.join(self.local_dir, STORE)

  def check(self) -> None:
    """Raises ValueError when the work directory cannot hold a sweep (a bucket that does not
    answer, or a file)."""
    if self.remote:
      try:
        storage.check_reachable(self.workdir)
      except storage.StorageError as e:
        raise ValueError(f"--workdir {self.workdir}: {e}") from None
    if storage.isfile(self.workdir):
      raise ValueError(f"--workdir {self.workdir} is not a directory")

  def makedirs(self) -> None:
    storage.makedirs(self.workdir)
    os.makedirs(self.local_dir, exist_ok=True)

  def pull_store(self) -> str:
    """The local store's path, after downloading the bucket's copy over it (the truth)."""
    if self.remote and storage.exists(self.store_url):
      storage.download(self.store_url, self.local_store)
    return self.local_store

  def push_store(self, local_path: str) -> None:
    """Uploads the local store to the bucket (nothing for a local sweep)."""
    if self.remote:
      storage.upload(local_path, self.store_url)

  def write_snapshot(self, snapshot: dict[str, Any]) -> None:
    storage.write_json(snapshot_path(self.workdir), snapshot, indent=1, sort_keys=True)

  def trial_dir(self, trial_id: str) -> str:
    return trial_dir(self.workdir, trial_id)

  def local_trial_dir(self, trial_id: str) -> str:
    """Where the trial's config.json and trial.log are written (== its workdir locally)."""
    return os.path.join(self.local_dir, TRIALS, trial_id)

  def compilation_cache_dir(self) -> str:
    """JAX's persistent compilation cache of the trials: a local directory (beside the
    trials, or the driver's local mirror of a bucket; each node of a cluster makes its own
    at the same path)."""
    return os.path.join(self.local_dir, COMPILATION_CACHE)

  def upload_trial_file(self, trial_id: str, local_path: str) -> None:
    """Copies a file of the trial's local directory into its directory in the bucket."""
    if self.remote:
      storage.upload(local_path, storage.join(self.trial_dir(trial_id),
                                              os.path.basename(local_path)))

  def log_path(self, trial_id: str, log_name: str) -> str:
    """A trial process's log: the driver's local copy, else the one in the trial's directory
    (written there by a cluster executor's node)."""
    local = os.path.join(self.local_trial_dir(trial_id), log_name)
    return local if os.path.exists(local) else storage.join(self.trial_dir(trial_id), log_name)
