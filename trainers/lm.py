r"""Train a Llama / MoE language model: ``python -m trainers.lm --config=configs/tiny.py``.

  python -m trainers.lm --config=configs/124m.py --config.optimizer.name=ademamix --workdir=runs/x
  python -m trainers.lm --config=configs/520m.py --dry_run      # sizes only, nothing allocated
  python -m trainers.lm --config=configs/520m.py --dry_run --dry_run_device=h100   # fits?

``--config`` is an ml_collections config file (overrides: ``--config.a.b=v``);
``--workdir`` holds checkpoints, ``metrics.jsonl``, ``loss_curve.png`` and
``summary.json``; rerunning with the same workdir resumes. With
``--config.train.downstream.tasks=hellaswag,arc_easy`` the run also scores
lm-eval tasks on its live parameters (``optbench_jax/evaluate/in_training.py``). ``--multihost``
forces ``jax.distributed.initialize()`` (it is also called when the
environment names several processes, see ``optbench_jax.train.mesh``).
One work directory holds one run: a second start on it is refused while the
first lives, and a resume with a changed config is refused with the change
named (``--allow_config_change`` accepts and records it).
The exit status is 0 for a completed or preempted run, 1 for a diverged one,
2 for an input or environment error (one ``error: ...`` line; ``--verbose``
adds the traceback), 3 when a ``gs://`` work directory's storage did not answer
within ``train.storage_timeout_s`` mid-run (one ``error: storage ...`` line
naming the last committed checkpoint; rerun to resume).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from optbench_jax import cli_errors
from optbench_jax import cli_logging
from optbench_jax import host_memory

if __name__ == "__main__":   # --config.x=v overrides are applied (and can fail) right below
  cli_errors.install_excepthook()
  host_memory.retain_freed_memory()   # before XLA starts its threads (optbench_jax/host_memory.py)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "tiny.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                          "Trainer config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and plots (default: "
    "runs/<config file>_<optimizer>).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print sizes, FLOPs/token and per-device memory, "
                             "then exit.")
_DRY_RUN_DEVICE = flags.DEFINE_string(
    "dry_run_device", None, "With --dry_run: check the memory against this device's HBM "
    "(v5e, v5p, h100, h200; default: all of them) and name the remat / attention_impl "
    "setting that fits.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize().")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "Multi-host: how long the other processes wait on a dead one "
    "before they exit with an error (JAX's coordination-service heartbeat).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "distributed_init_timeout_s", 300, "Multi-host: how long each process waits for the others "
    "to join at start.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume although the config differs from the one the run "
    "started with (e.g. a new eval setting); the change is recorded in run_record.json.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", "", "A local directory for JAX's persistent compilation cache, "
    "shared by processes that compile the same programs (a sweep's trials); empty: off.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print tracebacks with errors.")


def _downstream_evaluator(config):
  """The evaluator of ``train.downstream.tasks`` (checked now, before training), or None.

  lm-eval is imported only when tasks are set."""
  from optbench_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  if not config_lib.downstream_tasks(config_lib.resolve(config)):
    return None
  from optbench_jax.evaluate import in_training  # pylint: disable=import-outside-toplevel
  return in_training.DownstreamEvaluator(config)


def main(argv):
  del argv
  if _COMPILATION_CACHE.value:
    from optbench_jax import compilation_cache  # pylint: disable=import-outside-toplevel
    compilation_cache.enable(_COMPILATION_CACHE.value)
  # Before anything touches a JAX backend.
  from optbench_jax.train import mesh  # pylint: disable=import-outside-toplevel
  mesh.maybe_initialize_distributed(force=_MULTIHOST.value,
                                    heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value,
                                    initialization_timeout_s=_INIT_TIMEOUT.value)
  from optbench_jax import train  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  if _DRY_RUN.value:
    train.dry_run(config, device=_DRY_RUN_DEVICE.value)
    return 0
  workdir = _WORKDIR.value
  if workdir is None:
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(
        flags.FLAGS["config"]).split(":")[0]))[0]
    workdir = os.path.join("runs", f"{name}_{config.optimizer.name}")
  summary = train.run(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                      downstream=_downstream_evaluator(config))
  print(train.outcome_line(summary))
  return 1 if summary["status"] == "diverged" else 0


if __name__ == "__main__":
  cli_logging.configure(logging.INFO)
  app.run(lambda argv: sys.exit(cli_errors.run(main, argv, verbose=_VERBOSE.value)))
