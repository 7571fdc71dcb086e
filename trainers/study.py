"""Runs (or resumes) an optimizer study across scales: ``python -m trainers.study --config=configs/studies/x.py --workdir=DIR``.

A study is one sweep per model size (and batch size) with a tuning plan across
them (``optbench_jax.bench.study_config``), run as one program by the sweep
runner: the same flags, executors (``--executor=ray``), progress, resume,
``gs://`` work directories and ``--status`` as ``trainers.sweep``, one results
store. Shorter budgets branch from longer runs' WSD stable phases unless
``--config.share_stable_phase=False``. When every trial has finished, the study
report is written to ``DIR/study.json``, ``DIR/study_report.md``,
``DIR/study_report.html`` and ``DIR/plots/``; ``--report_only`` writes it from
what the store holds now, starting nothing.

Exit status: 0 when every trial of this invocation finished (completed or
diverged), 1 when some failed or were interrupted (rerun to retry / resume),
2 for an input error (one ``error: ...`` line; ``--verbose`` adds the traceback),
4 when the Ray cluster went away mid-study (as ``trainers.sweep``: what is saved, what
resumes and the command to rerun; no report is written).
"""

import sys

from absl import app, flags

from optbench_jax import cli_errors
from optbench_jax.bench import study, study_config, study_report, study_table, sweep_status
from trainers import sweep as sweep_cli

if __name__ == "__main__":   # config-flag errors happen at import time
  cli_errors.install_excepthook()

_EXTRAPOLATE = flags.DEFINE_list(
    "extrapolate", None, "Model sizes (parameters) the report extrapolates speedups to, "
    "e.g. 7e9 (default: the study config's extrapolate).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Write the study report from the "
                                 "store as it stands; start nothing.")


def _sizes() -> list[float] | None:
  if _EXTRAPOLATE.value is None:
    return None
  try:
    sizes = [float(v) for v in _EXTRAPOLATE.value]
  except ValueError:
    sizes = [-1.0]
  if not all(v > 0 for v in sizes):
    raise study_table.StudyInputError(
        f"--extrapolate must list positive model sizes, got {','.join(_EXTRAPOLATE.value)}")
  return sizes


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  extrapolate = _sizes()
  if flags.FLAGS.status:
    sweep_status.render(workdir)
    return 0
  if not _REPORT_ONLY.value:
    if flags.FLAGS.config is None:
      raise study_config.StudyConfigError(
          "--config is required (a study config file, configs/studies/*.py) unless --status "
          "or --report_only is given")
    status = sweep_cli.run(study.StudyProgram(flags.FLAGS.config))
    if status:
      return status
  paths = study_report.write_study_dir(workdir, extrapolate=extrapolate)
  print(f"[study] report: {paths[1]} (and study.json, study_report.html, plots/)")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(cli_errors.run(main, argv, verbose=flags.FLAGS.verbose)))
