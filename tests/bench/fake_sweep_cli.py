"""TEST DOUBLE: ``python -m trainers.sweep`` whose trials run ``tests/bench/fake_trainer.py``.

The sweep command as a user runs it (flags, exit status, last lines, the rerun
command it prints), with trials that take seconds. Run from the repository root:

  python -m tests.bench.fake_sweep_cli --config=SPEC.py --workdir=DIR [sweep flags]
"""

import functools
import sys

from absl import app

from optbench_jax import cli_errors
from optbench_jax.bench import sweep
from tests.bench import test_sweep

sweep.run_sweep = functools.partial(sweep.run_sweep, launcher=test_sweep.fake_launcher)

from trainers import sweep as sweep_cli  # pylint: disable=wrong-import-position

if __name__ == "__main__":
  app.run(lambda argv: sys.exit(cli_errors.run(sweep_cli.main, argv)))
