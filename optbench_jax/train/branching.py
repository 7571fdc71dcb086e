"""Starting a run from another run's checkpoint: shared stable phases of WSD runs.

Two runs with the same settings but different lengths under a
warmup-stable-decay schedule (Hägele et al. 2024, "Scaling Laws and
Compute-Optimal Training Beyond Fixed Training Durations") compute exactly the
same steps until the shorter one's decay begins at

    s = steps - round(decay_fraction * steps)

so the shorter run can start from the longer run's checkpoint at ``s`` and
train only its decay (Wen et al. 2025 reuse the stable phase the same way for
their 1-8x Chinchilla budgets). A run with ``train.branch_from=W`` and
``train.branch_step=s`` does that when its own work directory holds no
checkpoint yet. The claim "same steps" is checked, not assumed, before any
array is read:

* ``W`` is a training work directory whose recorded config equals this one
  except for the run's length, its evaluation cadence and the operational keys
  (``run_record``);
* the learning-rate schedules of both runs agree exactly at every step before
  ``s``, and neither run's tail weight average (whose window depends on the
  run's length) has started by ``s`` (everything else that varies with the
  step reads the step counter of the train state, which the checkpoint
  carries);
* ``W`` holds a checkpoint at ``s`` (the longer run keeps it:
  ``train.keep_steps``).

The branched run then restores that checkpoint (parameters, optimizer state,
data position), copies ``W``'s metric records up to ``s`` so its own curve is
whole, and trains on: the result is bit for bit what a run from scratch gives
(tests/train/test_branching.py).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax.config import ConfigError
from optbench_jax.train import checkpoint as checkpoint_lib
from optbench_jax.train import metrics as metrics_lib
from optbench_jax.train import optimizer as optimizer_lib
from optbench_jax.train import run_record
from optbench_jax.train import weight_averaging

# What may differ between a run and the run it branches from.
LENGTH_KEYS = ("train.steps", "train.eval_every")


def _fail(source: str, why: str) -> None:
  raise ConfigError(f"config.train.branch_from={source}: {why}")


def source_config(config: Any) -> dict[str, Any]:
  """The branch source's recorded config, checked against ``config`` (module docstring)."""
  t = config.train
  source = storage.resolve(t.branch_from)
  record = run_record.read_record(source)
  if record is None:
    _fail(source, f"not a training work directory (no {run_record.RECORD_NAME})")
  theirs = record.get("config", {})
  changes = [c for c in run_record.diff(theirs, config.to_dict())
             if not c.split(":", 1)[0] in LENGTH_KEYS]
  if changes:
    _fail(source, "that run computes other steps: " + "; ".join(changes))
  their_steps = int(theirs.get("train", {}).get("steps", 0))
  if t.branch_step > their_steps:
    _fail(source, f"branch_step {t.branch_step} lies beyond that run's {their_steps} steps")
  return theirs


def _learning_rates(a: Any, b: Any, length: int) -> tuple[np.ndarray, np.ndarray, int | None]:
  """Both runs' learning rates at steps 0 .. length - 1, and the first step where they differ
  (None: nowhere)."""
  steps = jnp.arange(length)
  mine = np.asarray(optimizer_lib.make_schedule(a)(steps))
  their = np.asarray(optimizer_lib.make_schedule(b)(steps))
  differ = np.flatnonzero(mine != their)
  return mine, their, int(differ[0]) if differ.size else None


def check_schedules_agree(config: Any, theirs: Mapping[str, Any]) -> None:
  """Both runs compute the same steps up to ``train.branch_step`` (:func:`shared_steps`)."""
  t = config.train
  other = config.copy_and_resolve_references()
  other.train.steps = int(theirs["train"]["steps"])
  mine, their, first = _learning_rates(config, other, t.branch_step)
  if first is not None:
    _fail(t.branch_from, f"the learning rates differ from step {first} on ({mine[first]:.6g} "
                         f"here, {their[first]:.6g} there): step {t.branch_step} is not in "
                         "both runs' shared stable phase")
  tail = _tail_limit(config, other)
  if tail is not None and t.branch_step > tail:
    _fail(t.branch_from, f"step {t.branch_step} lies inside a tail weight average "
                         f"(train.weight_averaging.tail_fraction), which differs between runs "
                         f"of other lengths; branch at step {tail} or earlier")


def _tail_limit(short: Any, long: Any) -> int | None:
  """The last checkpoint step before either run's tail average starts (None: no tail)."""
  starts = [weight_averaging.Spec.from_config(c.train).tail_start for c in (short, long)]
  starts = [s for s in starts if s is not None]
  return min(starts) - 1 if starts else None


def shared_steps(short: Any, long: Any) -> int:
  """How many first steps the run ``short`` computes exactly as the longer run ``long``
  (configs equal but for their length): the first step whose learning rates differ (at
  most ``short``'s last step), and before either run's tail weight average starts (its
  window depends on the run's length). A checkpoint of ``long`` at that step can start
  ``short``."""
  _, _, first = _learning_rates(short, long, short.train.steps)
  shared = int(short.train.steps) - 1 if first is None else first
  tail = _tail_limit(short, long)
  return shared if tail is None else min(shared, tail)


def check(config: Any) -> None:
  """Raises ConfigError (one line) unless ``config`` may branch as its train section says."""
  check_schedules_agree(config, source_config(config))
  source = _source_checkpointer(config)
  try:
    if config.train.branch_step not in source.all_steps():
      _fail(config.train.branch_from,
            f"holds no checkpoint at step {config.train.branch_step} (it has "
            f"{source.all_steps() or 'none'}); the longer run keeps it when its "
            "train.keep_steps names it")
  finally:
    source.close()


def _source_checkpointer(config: Any) -> checkpoint_lib.Checkpointer:
  return checkpoint_lib.Checkpointer(config.train.branch_from, keep=1, async_save=False,
                                     read_only=True)


def restore(config: Any, abstract_state: Any, data_iterator: Any) -> Any:
  """The branch source's state at ``train.branch_step`` (after :func:`check`); moves
  ``data_iterator`` there."""
  source = _source_checkpointer(config)
  try:
    return source.restore(config.train.branch_step, abstract_state, data_iterator)
  finally:
    source.close()


def copy_metrics(config: Any, workdir: str) -> None:
  """Writes the source's metric records up to the branch step as this run's first records."""
  step = config.train.branch_step
  source = workdir_files.path(storage.resolve(config.train.branch_from), workdir_files.METRICS)
  records = metrics_lib.read_records(source) if storage.exists(source) else []
  kept = [r for r in records if r["step"] < step or (r["step"] == step and "full_eval" not in r)]
  target = workdir_files.path(workdir, workdir_files.METRICS)
  storage.write_text(target, "".join(json.dumps(r) + "\n" for r in kept))
