"""Runs (or resumes) an optimizer sweep: ``python -m trainers.sweep --config=configs/sweeps/x.py --workdir=DIR``.

Each trial is a ``trainers.lm`` process in ``DIR/trials/<id>``; results go to
``DIR/results.sqlite``. Rerunning the same command skips finished trials and
resumes interrupted ones. While it runs, a progress bar (plain log lines when
stdout is not a terminal) counts trials done, running, diverged and failed;
``--workdir=DIR --status`` prints a table of every trial's state from another
shell, starting nothing. Then: ``python -m optbench_jax.bench.report DIR``.

Exit status: 0 when every trial of this invocation finished (completed or
diverged), 1 when some failed or were interrupted (rerun to retry / resume),
2 for an input error (one ``error: ...`` line; ``--verbose`` adds the traceback).
"""

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
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Trials run at once, as independent processes.")
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


def _terminate(signum, frame):
  # SIGTERM (e.g. a scheduler preempting the sweep) unwinds like Ctrl-C, so the
  # runner stops its trials, which checkpoint and resume on the next run.
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  del argv
  if _STATUS.value:
    sweep_status.render(_WORKDIR.value)
    return 0
  if _CONFIG.value is None:
    raise sweep_config.SweepConfigError("--config is required (a sweep config file, "
                                        "configs/sweeps/*.py) unless --status is given")
  signal.signal(signal.SIGTERM, _terminate)
  # A bad sweep raises one line naming the culprit before any trial starts (cli_errors).
  outcome = sweep.run_sweep(_CONFIG.value, _WORKDIR.value, parallel=_PARALLEL.value,
                            retry_failed=_RETRY_FAILED.value,
                            trial_timeout_s=_TRIAL_TIMEOUT.value)
  print(f"[sweep] launched {outcome.launched}, skipped {outcome.skipped} already finished, "
        f"recorded {outcome.recorded}, interrupted {len(outcome.interrupted)}")
  if outcome.interrupted:
    print("[sweep] rerun the same command to resume the interrupted trials")
  failed = outcome.recorded[results_store.FAILED]
  if failed:
    print(f"[sweep] {failed} trial(s) failed (see trials/<id>/trial.log); a rerun retries them")
  return 1 if failed or outcome.interrupted else 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(cli_errors.run(main, argv, verbose=_VERBOSE.value)))
