"""Runs (or resumes) an optimizer sweep: ``python -m trainers.sweep --config=configs/sweeps/x.py --workdir=DIR``.

Each trial is a ``trainers.lm`` process in ``DIR/trials/<id>``; results go to
``DIR/results.sqlite``. Rerunning the same command skips finished trials and
resumes interrupted ones. Then: ``python -m optbench_jax.bench.report DIR``.
"""

import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from optbench_jax.bench import results_store, search_space, sweep, sweep_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (results store, trials, report).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Trials run at once, as independent processes.")
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", True,
                                  "Rerun trials whose earlier attempt crashed (history is kept).")
_TRIAL_TIMEOUT = flags.DEFINE_float("trial_timeout_s", 0.0,
                                    "Stop a trial after this many seconds and record it as "
                                    "failed (0: no limit).")
flags.mark_flags_as_required(["config", "workdir"])


def _terminate(signum, frame):
  # SIGTERM (e.g. a scheduler preempting the sweep) unwinds like Ctrl-C, so the
  # runner stops its trials, which checkpoint and resume on the next run.
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  del argv
  signal.signal(signal.SIGTERM, _terminate)
  try:
    outcome = sweep.run_sweep(_CONFIG.value, _WORKDIR.value, parallel=_PARALLEL.value,
                              retry_failed=_RETRY_FAILED.value,
                              trial_timeout_s=_TRIAL_TIMEOUT.value)
  except (sweep_config.SweepConfigError, search_space.SearchSpaceError,
          results_store.StoreMismatchError) as e:
    print(f"error: {e}", file=sys.stderr)   # one line naming the culprit; no trial started
    return 2
  print(f"[sweep] launched {outcome.launched}, skipped {outcome.skipped} already finished, "
        f"recorded {outcome.recorded}, interrupted {len(outcome.interrupted)}")
  if outcome.interrupted:
    print("[sweep] rerun the same command to resume the interrupted trials")


if __name__ == "__main__":
  app.run(main)
