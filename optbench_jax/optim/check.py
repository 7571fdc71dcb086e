r"""``python -m optbench_jax.optim.check my_pkg.my_module:make_optimizer``: the contract suite.

Runs on any optimizer factory (an import path, a registered name or an
entry-point plugin) the property checks every optimizer of this package
passes (``optbench_jax.optim.contract``) and prints a pass/fail table with the
reason of each failure. Exit status: 0 when every check passes, 1 otherwise,
2 for bad input (a name that does not resolve).

  python -m optbench_jax.optim.check my_pkg.my_module:make_optimizer \
      [--hparams='{"b1": 0.9}'] [--tree=small] [--skip=memory_and_speed]

Each check's result is printed as soon as it finishes, then the table. The
last check, ``memory_and_speed``, measures optimizer-state bytes per parameter
and the step time against AdamW's: by default on the small test tree (seconds,
little memory); ``--tree=124m`` measures on a 124M-shaped tree (about 2 GB of
memory and minutes for the matrix optimizers), on request. A built-in
optimizer runs with the contract's hyperparameters for it
(``contract.CONTRACT_HPARAMS``, each with its reason) under ``--hparams``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# The sharded check needs 8 devices; on CPU they are forced before JAX starts.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m optbench_jax.optim.check",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("optimizer", help="import path 'pkg.module:factory' or a registered name")
  parser.add_argument("--hparams", default="{}", help="JSON dict of extra factory kwargs")
  parser.add_argument("--tree", choices=("small", "124m"), default="small",
                      help="tree for the memory/speed measurement (124m: ~2 GB, minutes)")
  parser.add_argument("--skip", default="", help="comma-separated checks to skip")
  args = parser.parse_args(argv)

  from optbench_jax.optim import contract, registry  # pylint: disable=import-outside-toplevel
  try:
    hparams = json.loads(args.hparams)
    if not isinstance(hparams, dict):
      raise ValueError("must be a JSON object")
  except ValueError as e:
    print(f"error: --hparams: {e}", file=sys.stderr)
    return 2
  skip = {s for s in args.skip.split(",") if s}
  unknown = sorted(skip - set(contract.CHECKS))
  if unknown:
    print(f"error: --skip names unknown checks {unknown}; valid: {list(contract.CHECKS)}",
          file=sys.stderr)
    return 2
  try:
    factory = registry.factory(args.optimizer)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  hparams = {**contract.hparams_for(args.optimizer), **hparams}
  names = [n for n in contract.CHECKS if n not in skip]
  print(f"optimizer contract: {args.optimizer}, {len(names)} checks", flush=True)

  def report(result) -> None:
    print(f"  {'PASS' if result.passed else 'FAIL'} {result.name}: {result.note}", flush=True)

  results = contract.run_checks(factory, hparams, names, tree=args.tree, on_result=report)
  print_table(args.optimizer + (f" {hparams}" if hparams else ""), results)
  return 0 if all(r.passed for r in results) else 1


def print_table(title: str, results) -> None:
  """The results as a rich table (plain text when stdout is not a terminal)."""
  from rich.console import Console  # pylint: disable=import-outside-toplevel
  from rich.table import Table  # pylint: disable=import-outside-toplevel
  table = Table(title=f"optimizer contract: {title}")
  table.add_column("check")
  table.add_column("result")
  table.add_column("detail", overflow="fold")
  first_with = {}
  for r in results:
    repeated = not r.passed and r.note in first_with
    table.add_row(r.name, "PASS" if r.passed else "FAIL",
                  f"(the reason above, as {first_with[r.note]})" if repeated else r.note)
    if not r.passed:
      first_with.setdefault(r.note, r.name)
  Console(width=max(100, Console().width)).print(table)
  failed = [r.name for r in results if not r.passed]
  print(f"{len(results) - len(failed)} passed, {len(failed)} failed")


if __name__ == "__main__":
  sys.exit(main())
