"""``<workdir>/run_record.json``: what a run is, so a resume cannot silently become another run.

Written when a run starts from scratch (before its first checkpoint): the
resolved config and its fingerprint (sha256 of the canonical JSON of the
config without the operational keys below). A resume compares the config it is
given with the record; a difference is refused with a one-line diff
(``model.d_model: 64 -> 128; optimizer.learning_rate: 0.001 -> 0.002``) unless
``allow_change`` (``--allow_config_change``), which accepts it and appends it,
with the step it applies from, to the record's ``changes``.

Operational keys do not change what is computed and are not compared: the mesh
(a checkpoint restores onto any mesh), the attention kernel (exact attention
either way: a run may resume on another backend), the data prefetch threads, and how often
the run logs, checkpoints and records training dynamics, how many checkpoints
it keeps, how long it waits on storage, where its records go (``logging``:
Weights & Biases), and where a run branched from (``branching`` checks that the
branch computes the same steps).

Also here: what a rerun of a finished run does (a completed run is reported as
it stands, not re-evaluated), and the summary fields a rerun that trains no
step carries over from the previous summary.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable, Mapping

from optbench_jax import config as config_lib
from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax.config import ConfigError

RECORD_NAME = workdir_files.RUN_RECORD
SUMMARY_NAME = workdir_files.SUMMARY
OPERATIONAL_KEYS = ("mesh", "model.attention_impl", "model.scan_layers", "data.prefetch_threads",
                    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                    "train.keep_steps", "train.branch_from", "train.branch_step",
                    "train.dynamics_every", "train.storage_timeout_s", "logging")
# Measured by the process that trained; a rerun that only reports keeps them.
CARRIED_OVER = ("tokens_per_s", "mfu", "compile_time_s", "peak_flops", "peak_flops_source")


def _canonical(config: Mapping[str, Any]) -> dict[str, Any]:
  """Plain JSON types (tuples -> lists, unknown objects -> str), as the record stores them."""
  return json.loads(json.dumps(dict(config), sort_keys=True, default=str))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _compared(config: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in _flatten(_canonical(config)).items()
          if not any(k == op or k.startswith(op + ".") for op in OPERATIONAL_KEYS)}


def fingerprint(config: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(_compared(config), sort_keys=True).encode()).hexdigest()[:16]


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """``key: old -> new`` for every compared key that differs (missing shown as <absent>).

  A key the old record lacks and the new config holds at its schema default is
  no change: the record predates the key, whose default computes what the run did.
  """
  a, b = _compared(old), _compared(new)
  defaults = _compared(config_lib.as_dict(config_lib.base_config()))
  absent = "<absent>"
  return [f"{k}: {json.dumps(a.get(k, absent))} -> {json.dumps(b.get(k, absent))}"
          for k in sorted(set(a) | set(b)) if a.get(k, absent) != b.get(k, absent)
          and not (k not in a and k in defaults and b.get(k) == defaults[k])]


def _read_json(path: str) -> dict[str, Any] | None:
  try:
    value = storage.read_json(path)
  except FileNotFoundError:
    return None
  except ValueError:
    return None   # torn by an old writer: treated as absent
  return value if isinstance(value, dict) else None


def check(workdir: str, config: Mapping[str, Any], resumed_step: int | None,
          allow_change: bool, log: Callable[[str], None], write: bool = True) -> None:
  """Writes the record (fresh run) or checks the config against it (resume); see module doc.

  Raises ConfigError (one line) on an unaccepted change.
  """
  path = storage.join(workdir, RECORD_NAME)
  config = _canonical(config)
  record = _read_json(path) if resumed_step is not None else None
  if record is None:
    if resumed_step is not None:
      log(f"warning: {path} is missing; recording the current config for the resume at step "
          f"{resumed_step} (the checkpoints predate run records, nothing to compare)")
    if write:
      storage.write_json(path, dict(fingerprint=fingerprint(config), config=config,
                                         created=time.time(), changes=[]), indent=1,
                              sort_keys=True)
    return
  if record.get("fingerprint") == fingerprint(config):
    return
  changes = diff(record.get("config", {}), config)
  if not changes:   # fingerprint rule changed between versions; the values agree
    return
  if not allow_change:
    raise ConfigError(
        f"the config differs from the one the checkpoints in {workdir} were made with: "
        f"{'; '.join(changes)}. Use a new --workdir, or pass --allow_config_change to resume "
        f"from step {resumed_step} with the new config (recorded in {RECORD_NAME})")
  log(f"warning: resuming from step {resumed_step} with a changed config (allowed): "
      f"{'; '.join(changes)}")
  record.setdefault("changes", []).append(
      dict(from_step=resumed_step, time=time.time(), diff=changes))
  record.update(fingerprint=fingerprint(config), config=config)
  if write:
    storage.write_json(path, record, indent=1, sort_keys=True)


def read_record(workdir: str) -> dict[str, Any] | None:
  """The run record of ``workdir`` (None when there is none)."""
  return _read_json(storage.join(workdir, RECORD_NAME))


def note_branch(workdir: str, branched_from: Mapping[str, Any]) -> None:
  """Records that the run started from another run's checkpoint (kept across resumes)."""
  path = storage.join(workdir, RECORD_NAME)
  record = _read_json(path) or {}
  record["branched_from"] = dict(branched_from)
  storage.write_json(path, record, indent=1, sort_keys=True)


def previous_summary(workdir: str) -> dict[str, Any] | None:
  return _read_json(storage.join(workdir, SUMMARY_NAME))


def already_completed(previous: Mapping[str, Any] | None, resumed_step: int | None,
                      steps: int) -> bool:
  """True when the workdir holds a completed run of ``steps`` steps whose last checkpoint is there."""
  return bool(previous and previous.get("status") == "completed" and resumed_step == steps
              and previous.get("steps") == steps and previous.get("final_eval_loss") is not None)


def carry_over(summary: dict[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
  """Fills throughput fields a rerun that trained no step could not measure."""
  if previous:
    for key in CARRIED_OVER:
      if summary.get(key) is None and previous.get(key) is not None:
        summary[key] = previous[key]
  return summary
