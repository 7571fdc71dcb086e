"""Checkpoints: orbax ``CheckpointManager``, asynchronous, state + data iterator.

A checkpoint at step ``s`` holds the train state after ``s`` optimizer steps
(step counter, parameters, optimizer state) as ``state`` and the grain
iterator's position (the next batch to draw) as ``data``, in one
``ocp.args.Composite``. Restoring takes abstract targets (ShapeDtypeStruct
leaves carrying the *current* mesh's shardings), so a checkpoint written on
one mesh, device count or process count restores onto another (the data
iterator's position too: see ``restore``). Saves are asynchronous:
training continues while the arrays are written; ``wait`` blocks before exit.
Every wait on storage runs inside ``bound(what)`` (the trainer passes
``StorageDeadline.bound``, which ends a gs:// run whose storage stops
answering), and ``committed_step`` is the newest step known to be committed:
restored, saved and since waited for, or (gs://) seen committed by a watcher
thread once orbax's background save ended, so that the error line of a run whose
storage stopped answering names the newest checkpoint a rerun resumes from.

A damaged newest checkpoint (a truncated array file, a missing iterator file, an
empty ``_METADATA``: a disk that filled up, a copy cut short) must not cost the
run: ``restore_latest`` walks back to the newest checkpoint that restores whole,
says so loudly, and moves the damaged ones to ``<workdir>/checkpoints_damaged/``
(kept for inspection, out of orbax's sight). It sets nothing aside when no
checkpoint restores, since then the cause is rather the target (e.g. a model
changed on purpose) than the files.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import sys
import threading
import time
from typing import Any, Callable, ContextManager, Sequence

import grain.checkpoint as grain_checkpoint
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from optbench_jax import storage


DAMAGED_DIR = "checkpoints_damaged"


def is_complete(workdir: str, step: int) -> bool:
  """Whether ``workdir`` holds a finished checkpoint at ``step`` (orbax marks one with
  ``commit_success.txt``; a save in progress lives in a temporary directory)."""
  return storage.exists(storage.join(storage.resolve(workdir), "checkpoints", str(int(step)),
                                     "commit_success.txt"))


class CheckpointError(RuntimeError):
  """No checkpoint of the run restores; the message names each one's error."""


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _is_abandoned_read(unraisable) -> bool:
  """An error of a read a failed restore abandoned (see ``_drop_abandoned_reads``)."""
  obj, error = unraisable.object, unraisable.exc_value
  code = getattr(obj, "cr_code", None)
  if inspect.iscoroutine(obj) and code is not None and "orbax" in code.co_filename:
    return True   # a shard read never awaited, collected with its error
  if obj is None and isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    # a read that finished after its restore's loop was closed
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith("asyncio/base_events.py")
  return False


def _drop_abandoned_reads() -> None:
  """Silences the reads a failed restore abandons, from now on in this process (installed
  before the first restore: they can surface while the failure is still propagating).

  When one array of a checkpoint fails to read, orbax's reads of its other shards are left
  behind: coroutines never awaited, each holding the same error, and reads that finish after
  the restore's event loop has closed. Python prints every one as it is collected or
  completes ("Exception ignored in: ..." and a traceback), screens repeating the damage
  already reported in one line. Only those two kinds are dropped; any other unraisable
  exception goes to the hook that was installed.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_reads", False):
    return

  def hook(unraisable):
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook


class Checkpointer:
  """``<workdir>/checkpoints``: save every N steps and at the end, restore the latest.

  A ``gs://`` workdir goes to orbax unchanged: orbax writes there through
  tensorstore's ``gcs`` driver and, having no atomic rename on GCS, marks a
  finished step with ``commit_success.txt`` instead of renaming a temp dir.
  """

  def __init__(self, workdir: str, keep: int, async_save: bool = True,
               keep_steps: Sequence[int] = (), read_only: bool = False,
               bound: Callable[[str], ContextManager[Any]] = lambda what: contextlib.nullcontext()):
    """Keeps the newest ``keep`` checkpoints, and those at ``keep_steps`` for good.

    ``read_only``: only restores (another run's checkpoints, e.g. a branch source).
    ``bound(what)``: a context manager around each wait on storage (module docstring).
    """
    self.directory = storage.join(storage.resolve(workdir), "checkpoints")
    self.keep_steps = sorted(set(int(s) for s in keep_steps))
    self.committed_step: int | None = None
    self._pending: int | None = None   # saved, not yet waited for
    self._bound = bound
    preserve = cm.LatestN(keep)
    if self.keep_steps:
      preserve = cm.AnyPreservationPolicy([preserve, cm.CustomSteps(self.keep_steps)])
    with bound("listing the checkpoints"):
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              create=not read_only, read_only=read_only, preservation_policy=preserve,
              enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Starts an asynchronous save of ``state`` and the iterator position at ``step``."""
    if step in self.manager.all_steps():
      return
    with self._bound(f"saving checkpoint {step}"):
      # Orbax first waits for the previous save: returning means that one is committed.
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain_checkpoint.CheckpointSave(data_iterator)), force=True)
    self._committed()
    self._pending = step
    if storage.is_remote(self.directory):
      threading.Thread(target=self._watch_commit, args=(step,), daemon=True,
                       name=f"checkpoint-{step}-commit").start()

  def _committed(self) -> None:
    """The pending save was waited for without an error: it is committed."""
    if self._pending is not None:
      self.committed_step = max(self._pending, self.committed_step or 0)
      self._pending = None

  def _watch_commit(self, step: int) -> None:
    """Notes ``step`` committed as soon as orbax's background save ends with its marker.

    Polls ``is_saving_in_progress`` (a flag, no I/O): waiting on orbax here would
    log a failed save's traceback a second time. A daemon thread, left behind when
    storage stops answering.
    """
    while self.manager.is_saving_in_progress():
      time.sleep(0.1)
    try:
      if is_complete(storage.parent(self.directory), step):
        self.committed_step = max(step, self.committed_step or 0)
    except Exception:  # pylint: disable=broad-except  (unknown stays unknown)
      pass

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    """The state at ``step`` laid out as ``abstract_state``; moves ``data_iterator`` in place.

    Elastic: grain writes one iterator file per process (``process_<i>-of-<P>.json``).
    The trainer's iterator position is defined globally (``data.loader``: the
    next global batch), so when the checkpoint was written by another number of
    processes, every file holds the same state and it is read from them directly
    (after checking that they agree).
    """
    data_dir = storage.join(self.directory, str(step), "data")
    own_file = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    with self._bound(f"listing checkpoint {step}"):
      files = sorted(n for n in storage.listdir(data_dir)
                     if n.startswith("process_") and n.endswith(".json")) if storage.isdir(
                         data_dir) else []
    with self._bound(f"restoring checkpoint {step}"):
      if own_file in files or not files:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain_checkpoint.CheckpointRestore(data_iterator)))
        return restored["state"]
      states = {name: json.loads(storage.read_text(storage.join(data_dir, name)))
                for name in files}
      if any(state != next(iter(states.values())) for state in states.values()):
        raise ValueError(f"the per-process iterator files in {data_dir} disagree "
                         f"({sorted(states)}); cannot restore onto {jax.process_count()} "
                         "process(es)")
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
      data_iterator.set_state(next(iter(states.values())))
      return restored["state"]

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the parameters of the state at ``step``, laid out as ``abstract_params``
    (ShapeDtypeStruct leaves carrying shardings).

    A partial restore: the optimizer state (2-3x the parameters) and the data
    iterator are never read, so no optimizer or data pipeline is needed.
    """
    item = {"params": abstract_params}
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored["state"]["params"]

  def restore_latest(self, abstract_state: Any, data_iterator: Any,
                     log: Callable[[str], None], primary: bool = True) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that restores, or (None, None) when there is none.

    Newer checkpoints that fail to restore are moved to ``checkpoints_damaged``
    (by the ``primary`` process) once an older one has restored.
    """
    failures = []   # (step, the error's first line): no live error keeps its reads alive
    _drop_abandoned_reads()   # before: a failing read's siblings finish while it propagates
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore/grain: many types
        failures.append((step, _first_line(e)))
      else:
        if failures:
          with self._bound("setting damaged checkpoints aside"):
            moved = [self._set_aside(bad) if primary else f"step {bad}" for bad, _ in failures]
            self.manager.reload()
          log(f"RESUMING FROM AN OLDER CHECKPOINT: step {step}; the damaged newer "
              f"checkpoint(s) were moved to {', '.join(moved)}")
        self.committed_step = step
        return step, state
      gc.collect()    # out of the except block (its traceback released): the abandoned reads
      log(f"checkpoint {step} in {self.directory} does not restore ({failures[-1][1]})")
    if failures:
      raise CheckpointError(
          f"no checkpoint in {self.directory} restores: " +
          "; ".join(f"step {s}: {why}" for s, why in failures) +
          " (if the model or optimizer changed, use a new workdir)")
    return None, None

  def _set_aside(self, step: int) -> str:
    source = storage.join(self.directory, str(step))
    target_dir = storage.join(storage.parent(self.directory), DAMAGED_DIR)
    storage.makedirs(target_dir)
    target = storage.join(target_dir, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
    storage.move(source, target)
    return target

  def reached_preemption(self, step: int) -> bool:
    """True on every host once a multi-host preemption notice reached this step."""
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    with self._bound(f"waiting for checkpoint {self._pending} to be written"
                     if self._pending is not None else "waiting for the checkpoint writes"):
      self.manager.wait_until_finished()
    self._committed()

  def close(self) -> None:
    with self._bound("finishing the checkpoint writes"):
      self.manager.close()
    self._committed()
