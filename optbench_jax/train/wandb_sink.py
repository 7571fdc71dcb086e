"""A Weights & Biases sink: every metrics record at its step, the summary at the end.

On when ``logging.wandb.project`` is set and ``logging.wandb.mode`` is not
``disabled`` (``offline`` writes the run under ``$WANDB_DIR``, default the work
directory, for ``wandb sync`` later; ``online`` streams it). Process 0 only,
like the metrics file. The run is started with the resolved config, logs each
record ``MetricsWriter`` writes (training, eval, dynamics) with
``wandb.log(record, step=step)``, and gets the run's scalar summary fields
(``final_eval_loss``, ``final_eval_loss_ema``, ``status``, ...) as its
summary before ``finish``.

A resumed run continues the same W&B run: its id is kept in
``<workdir>/wandb_run_id`` and passed with ``resume="allow"``. W&B ignores
steps below the last one it has, so records a killed process logged past its
last checkpoint stay as they were (the metrics file is the record of truth).

``wandb`` is an optional dependency (the ``wandb`` extra): :func:`check` runs
before anything is compiled and turns its absence into one ConfigError line.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Mapping

from optbench_jax import storage
from optbench_jax import workdir_files
from optbench_jax.config import ConfigError


def requested(config: Any) -> bool:
  w = config.logging.wandb
  return bool(w.project) and w.mode != "disabled"


def check(config: Any) -> None:
  """ConfigError (one line) when the config asks for W&B and ``wandb`` does not import."""
  if not requested(config):
    return
  try:
    import wandb  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise ConfigError(
        f"config.logging.wandb: project {config.logging.wandb.project!r} with mode "
        f"{config.logging.wandb.mode!r} needs the wandb package (pip install "
        f"'optbench_jax[wandb]'), or set logging.wandb.mode=disabled") from None


def _run_id(workdir: str) -> str:
  path = workdir_files.path(workdir, workdir_files.WANDB_RUN_ID)
  if storage.exists(path):
    return storage.read_text(path).strip()
  run_id = uuid.uuid4().hex[:12]
  storage.write_text(path, run_id + "\n")
  return run_id


def _scalars(values: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in values.items()
          if isinstance(v, (int, float, str, bool)) or v is None}


class WandbSink:
  """Forwards records to a W&B run; construct with :func:`start`."""

  def __init__(self, run):
    self.run = run

  def log(self, step: int, values: Mapping[str, Any]) -> None:
    self.run.log(_scalars(values), step=int(step))

  def finish(self, summary: Mapping[str, Any]) -> None:
    self.run.summary.update(_scalars(summary))
    self.run.finish()


def start(config: Any, workdir: str) -> WandbSink | None:
  """The run's sink (None when W&B is not requested); call on process 0 only."""
  if not requested(config):
    return None
  import wandb  # pylint: disable=import-outside-toplevel
  w = config.logging.wandb
  local = not storage.is_remote(workdir)
  run = wandb.init(project=w.project, entity=w.entity or None, mode=w.mode,
                   config=config.to_dict(), id=_run_id(workdir), resume="allow",
                   name=os.path.basename(os.path.normpath(workdir)),
                   dir=os.environ.get("WANDB_DIR") or (workdir if local else None))
  return WandbSink(run)
