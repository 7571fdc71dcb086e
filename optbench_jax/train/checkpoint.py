"""Checkpoints: orbax ``CheckpointManager``, asynchronous, state + data iterator.

A checkpoint at step ``s`` holds the train state after ``s`` optimizer steps
(step counter, parameters, optimizer state) as ``state`` and the grain
iterator's position (the next batch to draw) as ``data``, in one
``ocp.args.Composite``. Restoring takes abstract targets (ShapeDtypeStruct
leaves carrying the *current* mesh's shardings), so a checkpoint written on
one mesh or device count restores onto another. Saves are asynchronous:
training continues while the arrays are written; ``wait`` blocks before exit.
"""

from __future__ import annotations

import os
from typing import Any

import grain.checkpoint as grain_checkpoint
import orbax.checkpoint as ocp


class Checkpointer:
  """``<workdir>/checkpoints``: save every N steps and at the end, restore the latest."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Starts an asynchronous save of ``state`` and the iterator position at ``step``."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain_checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    """The state at ``step`` laid out as ``abstract_state``; moves ``data_iterator`` in place."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain_checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]

  def reached_preemption(self, step: int) -> bool:
    """True on every host once a multi-host preemption notice reached this step."""
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
