"""The files of a run's work directory: their names, paths and readers.

A work directory (local or ``gs://``) holds ``checkpoints/`` (orbax),
``metrics.jsonl`` (one JSON record a line, each with its ``step``: training
records, eval records; appended by the trainer, rewritten whole on a resume),
``summary.json`` (the run's outcome, written at its end), ``run_record.json``
(the config the run started with and its accepted changes),
``loss_curve.png`` and, with ``train.dynamics_every``, ``dynamics.png``
(and ``wandb_run_id``, the W&B run a resume continues, when W&B logging is
on). The trainer writes them; the sweep, its status and its report read them,
all through the names and readers here.
"""

from __future__ import annotations

import json
from typing import Any

from optbench_jax import storage

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RUN_RECORD = "run_record.json"
LOSS_CURVE = "loss_curve.png"
DYNAMICS_PLOT = "dynamics.png"
WANDB_RUN_ID = "wandb_run_id"
# Written by a cluster executor's driver while it reschedules a trial whose node was lost
# ({"retry": k, "of": n, "time": t}); removed when the driver is done with the trial.
RESCHEDULING = "rescheduling.json"


def path(workdir: str, name: str) -> str:
  """``workdir/name`` (a local path or a ``gs://`` URL)."""
  return storage.join(workdir, name)


def parse_metrics(text: str) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl`` text; a line that does not parse (a torn write by a
  killed process, or a line being written) or that holds no ``step`` is skipped."""
  records = []
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and "step" in record:
      records.append(record)
  return records


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl`` ([] when there is none yet)."""
  metrics = path(workdir, METRICS)
  return parse_metrics(storage.read_text(metrics)) if storage.exists(metrics) else []


def last_step(workdir: str) -> int:
  """The last step ``workdir/metrics.jsonl`` records (0 when none)."""
  return max((int(r["step"]) for r in read_metrics(workdir)), default=0)


def read_summary(workdir: str) -> dict[str, Any] | None:
  """``workdir/summary.json`` (None when the run has not ended); raises ValueError when
  the file is not a JSON object."""
  summary_path = path(workdir, SUMMARY)
  if not storage.exists(summary_path):
    return None
  summary = json.loads(storage.read_text(summary_path))
  if not isinstance(summary, dict):
    raise ValueError(f"{summary_path} is not a JSON object")
  return summary
