"""``python -m optbench_jax.evaluate``: see ``optbench_jax.evaluate.cli``."""

import sys

from optbench_jax import cli_errors
from optbench_jax.evaluate import cli

if __name__ == "__main__":
  cli_errors.install_excepthook()
  sys.exit(cli_errors.run(cli.main))
