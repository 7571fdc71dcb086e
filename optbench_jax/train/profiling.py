"""``train.profile``: a JAX profiler trace of a few steady-state training steps.

With ``config.train.profile`` the trainer's process 0 records
``jax.profiler`` traces of ``NUM_STEPS`` steps, starting one step after the
first step of the process (that one compiles), into ``<workdir>/profile/``
(a host-local cache directory for a ``gs://`` work directory, whose path is
logged). Open it with TensorBoard's profile plugin or Perfetto. The traced steps
are synchronised so that the trace holds their device work, not only their
dispatch.
"""

from __future__ import annotations

import jax
from absl import logging

from optbench_jax import storage

NUM_STEPS = 5
DIRECTORY = "profile"


def trace_directory(workdir: str) -> str:
  """Where the trace of ``workdir``'s run is written (always a local path)."""
  if storage.is_remote(workdir):
    return storage.local_cache_dir(storage.join(workdir, DIRECTORY), "profiles")
  return storage.join(workdir, DIRECTORY)


class StepProfiler:
  """Starts a trace before step ``first_step + 1`` and stops it after ``NUM_STEPS`` steps."""

  def __init__(self, enabled: bool, workdir: str, first_step: int, last_step: int):
    self.enabled = enabled
    self.directory = trace_directory(workdir)
    self.start_at = first_step + 1             # the step after this process's compiling one
    self.stop_at = min(self.start_at + NUM_STEPS, last_step)
    self.active = False

  def before_step(self, step: int) -> None:
    """Called with the number of steps done before dispatching the next one."""
    if self.enabled and not self.active and step == self.start_at and step < self.stop_at:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after_step(self, step: int, state) -> None:
    """Called with the number of steps done after dispatching one."""
    if self.active and step >= self.stop_at:
      jax.block_until_ready(state)
      self.stop()
      logging.info("profiler trace of steps %d-%d written to %s", self.start_at + 1,
                   self.stop_at, self.directory)

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
