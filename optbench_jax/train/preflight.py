"""Checks of the work directory and the data made before training, so no run fails at its end.

Each raises ``ConfigError`` with one line. They cover what the config schema
cannot see: a work directory that is empty (an unset shell variable) or a file,
a checkpoints directory the run cannot write (orbax would only find out at the
first save, then wait 300 s for the directory), a corpus without a validation
split or too short for one sequence, and a checkpoint past ``train.steps``.
"""

from __future__ import annotations

import os
import uuid

from optbench_jax import data as data_lib
from optbench_jax import storage
from optbench_jax.train.config_checks import ConfigError


def workdir_path(workdir: str | os.PathLike | None) -> str:
  """The absolute work directory (or ``gs://`` URL); refuses an empty name and an existing
  non-directory; for a ``gs://`` URL, checks that gcsfs is installed and the bucket answers."""
  if workdir is None or not str(workdir).strip():
    raise ConfigError("--workdir is empty (an unset shell variable?); name a directory")
  path = storage.resolve(workdir)
  if storage.is_remote(path):
    try:
      storage.check_reachable(path)
    except storage.StorageError as e:
      raise ConfigError(f"--workdir {path}: {e}") from None
  if storage.isfile(path):
    raise ConfigError(f"--workdir {path} exists and is not a directory")
  return path


def check_writable(directory: str) -> None:
  """Creates ``directory`` and writes, syncs and removes a probe file (object) in it."""
  if storage.is_remote(directory):
    probe = storage.join(directory, f".write_probe_{uuid.uuid4().hex[:8]}")
    try:
      storage.write_bytes(probe, b"probe")
      storage.remove(probe)
    except OSError as e:
      raise ConfigError(f"cannot write checkpoints to {directory}: {e}") from None
    return
  probe = os.path.join(directory, f".write_probe_{uuid.uuid4().hex[:8]}")
  try:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
      os.write(fd, b"probe")
      os.fsync(fd)
    finally:
      os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"cannot write checkpoints to {directory}: {e.strerror or e}") from None


def check_data(manifest_dir: str, config) -> None:
  """The train split holds one sequence and the validation split one evaluation batch."""
  d = config.data
  try:
    data_lib.make_train_iterator(
        manifest_dir, seq_len=d.seq_len, global_batch_size=d.global_batch_size,
        seed=d.shuffle_seed, process_index=0, process_count=1, prefetch_threads=0)
    data_lib.make_eval_iterator(
        manifest_dir, seq_len=d.seq_len, batch_size=d.global_batch_size // d.grad_accum_steps,
        process_index=0, process_count=1, max_batches=1, prefetch_threads=0)
  except data_lib.DataError as e:
    raise ConfigError(f"config.data: {e}") from None


def check_resume_step(step: int | None, steps: int) -> None:
  if step is not None and step > steps:
    raise ConfigError(f"the latest checkpoint (step {step}) is past train.steps={steps}; "
                      "raise train.steps (with --allow_config_change) or use a new --workdir")
