"""Runs (or resumes) an optimizer sweep: ``python -m trainers.sweep --config=configs/sweeps/x.py --workdir=DIR``.

Each trial is a ``trainers.lm`` process in ``DIR/trials/<id>``; results go to
``DIR/results.sqlite``. ``--executor=ray`` runs the trials on a Ray cluster
(``--ray_address``; ``DIR`` must be shared by its nodes; see bench/ray_executor.py).
Rerunning the same command skips finished trials and resumes interrupted ones.
While it runs, a progress bar (plain log lines when stdout is not a terminal)
counts trials done, running, diverged and failed; ``--workdir=DIR --status``
prints a table of every trial's state from another shell, starting nothing.
Then: ``python -m optbench_jax.bench.report DIR``.

Exit status: 0 when every trial of this invocation finished (completed or
diverged), 1 when some failed or were interrupted (rerun to retry / resume),
2 for an input error (one ``error: ...`` line; ``--verbose`` adds the traceback),
4 when the Ray cluster went away mid-sweep (its head stopped answering): the last
lines say so, what the results store holds, which trials resume from their
checkpoints, and the command to rerun once the cluster is back.
"""

import os
import shlex
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from optbench_jax import cli_errors
from optbench_jax.bench import results_store, sweep, sweep_config, sweep_status

if __name__ == "__main__":   # config-flag errors happen at import time, below
  cli_errors.install_excepthook()

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (results store, trials, report).")
_PARALLEL = flags.DEFINE_integer(
    "parallel", None, "Trials run at once (default: 1 locally; with --executor=ray as many "
    "as the cluster holds, 0 says the same).")
_EXECUTOR = flags.DEFINE_enum("executor", "local", ["local", "ray"],
                              "Where trials run: processes of this machine, or a Ray cluster.")
_RAY_ADDRESS = flags.DEFINE_string(
    "ray_address", None, "--executor=ray: the cluster (host:port, ray://host:port or auto; "
    "default: RAY_ADDRESS, else a cluster started on this machine, else a new local one).")
_MAX_NODE_RETRIES = flags.DEFINE_integer(
    "max_node_retries", 3, "--executor=ray: times a trial is rescheduled after losing its "
    "node (it resumes from its checkpoint) before it is recorded failed.")
_RAY_AUTOSCALING = flags.DEFINE_bool(
    "ray_autoscaling", False, "--executor=ray: the cluster adds nodes on demand; do not "
    "refuse trial_resources that no node alive now can hold (trials wait for nodes).")
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", True,
                                  "Rerun trials whose earlier attempt crashed (history is kept).")
_TRIAL_TIMEOUT = flags.DEFINE_float("trial_timeout_s", 0.0,
                                    "Stop a trial after this many seconds and record it as "
                                    "failed (0: no limit).")
_STATUS = flags.DEFINE_bool("status", False, "Print what the sweep in --workdir has done, is "
                            "running, failed and has left (from its store and trial "
                            "directories), then exit; starts nothing, needs no --config.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print tracebacks with errors.")
flags.mark_flags_as_required(["workdir"])


CLUSTER_GONE = 4   # exit status (see the module docstring), apart from the trainer's codes


def _terminate(signum, frame):
  # SIGTERM (e.g. a scheduler preempting the sweep) unwinds like Ctrl-C, so the
  # runner stops its trials, which checkpoint and resume on the next run.
  raise KeyboardInterrupt(f"signal {signum}")


def run(program) -> int:
  """Runs (or resumes) ``program`` (a sweep config or a study) with the command's flags;
  the exit status of the module docstring."""
  signal.signal(signal.SIGTERM, _terminate)
  # A bad sweep raises one line naming the culprit before any trial starts (cli_errors).
  ray = _EXECUTOR.value == "ray"
  parallel = _PARALLEL.value if _PARALLEL.value is not None else (0 if ray else 1)
  options = dict(address=_RAY_ADDRESS.value, max_node_retries=_MAX_NODE_RETRIES.value,
                 autoscaling=_RAY_AUTOSCALING.value) if ray else {}
  outcome = sweep.run_sweep(program, _WORKDIR.value, parallel=parallel,
                            retry_failed=_RETRY_FAILED.value,
                            trial_timeout_s=_TRIAL_TIMEOUT.value, executor=_EXECUTOR.value,
                            executor_options=options)
  if outcome.stopped:
    _stopped(outcome)
  print(f"[sweep] launched {outcome.launched}, skipped {outcome.skipped} already finished, "
        f"recorded {outcome.recorded}, interrupted {len(outcome.interrupted)}")
  if outcome.interrupted:
    print("[sweep] rerun the same command to resume the interrupted trials")
  failed = outcome.recorded[results_store.FAILED]
  if failed:
    print(f"[sweep] {failed} trial(s) failed (see trials/<id>/trial.log); a rerun retries them")
  return 1 if failed or outcome.interrupted else 0


def _stopped(outcome) -> None:
  """The end of a sweep whose cluster went away: what is saved, what resumes, what to run."""
  try:
    lines = sweep_status.stopped_summary(_WORKDIR.value, outcome.interrupted, outcome.finished)
  except Exception as e:  # pylint: disable=broad-except
    lines = [f"[sweep] (the summary could not be read: {e}; `--status` shows it)"]
  for line in lines:
    print(line)
  print("[sweep] start the Ray cluster again (or point --ray_address at another), then rerun "
        "this to resume:")
  print("  " + shlex.join(sys.orig_argv))
  sys.stdout.flush()
  sys.stderr.flush()
  # Ray's driver is still tied to the dead head: at interpreter exit its disconnect waits on
  # the GCS, and about a minute after the loss it aborts the process with its own C++ error.
  # Leave now, so these lines stay the last ones.
  os._exit(CLUSTER_GONE)  # pylint: disable=protected-access


def main(argv):
  del argv
  if _STATUS.value:
    sweep_status.render(_WORKDIR.value)
    return 0
  if _CONFIG.value is None:
    raise sweep_config.SweepConfigError("--config is required (a sweep config file, "
                                        "configs/sweeps/*.py) unless --status is given")
  return run(_CONFIG.value)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(cli_errors.run(main, argv, verbose=_VERBOSE.value)))
