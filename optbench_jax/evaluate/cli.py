"""The command line: harness tasks and validation bits per byte of a trained run.

    python -m optbench_jax.evaluate --workdir=W --tasks=hellaswag,arc_easy
        [--include_path=DIR] [--limit=N] [--step=N] [--batch_size=N]
        [--num_fewshot=K] [--no-bpb]

runs ``lm_eval.simple_evaluate`` on the model of ``W``'s checkpoint ``--step``
(default: the latest) through ``harness.OptbenchLM``, computes the validation
bits per byte (``validation``; ``--no-bpb`` skips it, ``--limit`` also caps its
sequences), writes ``W/evals/<step>.json`` (``results``) and prints the
harness's table. Before the model is loaded: the work directory is checked,
then that ``W/evals`` is writable, then every task is found and its data
loaded (``tasks``), each failure one ``error:`` line (``cli_errors``).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from optbench_jax import inference
from optbench_jax.evaluate import EvaluationError
from optbench_jax.evaluate import harness
from optbench_jax.evaluate import results as results_lib
from optbench_jax.evaluate import tasks as tasks_lib
from optbench_jax.evaluate import validation


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m optbench_jax.evaluate",
                              description=__doc__.split("\n\n", maxsplit=1)[0])
  p.add_argument("--workdir", required=True, help="the training run's work directory")
  p.add_argument("--tasks", default="",
                 help="comma-separated lm-eval task, group or tag names (globs allowed)")
  p.add_argument("--include_path", default=None, help="a directory of task YAML files")
  p.add_argument("--limit", type=int, default=None,
                 help="at most this many documents per task, and validation sequences")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--batch_size", type=int, default=inference.DEFAULT_BATCH_SIZE,
                 help="sequences per forward pass")
  p.add_argument("--num_fewshot", type=int, default=None,
                 help="few-shot examples (default: each task's own)")
  p.add_argument("--bpb", action=argparse.BooleanOptionalAction, default=True,
                 help="also compute bits per byte on the validation split")
  p.add_argument("--verbose", action="store_true", help="tracebacks for errors")
  return p


def _validation_line(record: dict) -> str:
  if record["bits_per_byte"] is None:
    return (f"validation: {record['bits_per_token']:.4f} bits/token over {record['tokens']} "
            f"tokens ({validation.SYNTHETIC_NOTE})")
  return (f"validation: {record['bits_per_byte']:.4f} bits/byte, "
          f"{record['bits_per_token']:.4f} bits/token over {record['tokens']} tokens, "
          f"{record['bytes']} bytes")


def evaluate(workdir: str, tasks: Sequence[str] = (), include_path: str | None = None,
             limit: int | None = None, step: int | None = None,
             batch_size: int = inference.DEFAULT_BATCH_SIZE, num_fewshot: int | None = None,
             bpb: bool = True) -> tuple[str, dict]:
  """Runs the evaluation (module docstring); returns (the JSON's path, its dict)."""
  if not tasks and not bpb:
    raise EvaluationError("nothing to evaluate: give --tasks, or leave --bpb on")
  if limit is not None and limit < 1:
    raise EvaluationError(f"--limit must be >= 1, got {limit}")
  config = inference.run_config(workdir)   # ModelLoadError: not a training work directory
  if tasks:
    harness.check_text_model(config.model.vocab_size)
  results_lib.check_writable(workdir)
  manager, task_objects = tasks_lib.load_tasks(tasks, include_path) if tasks else (None, [])
  model = inference.load(workdir, step)
  output = {}
  if task_objects:
    import lm_eval  # pylint: disable=import-outside-toplevel  (slow import)
    lm = harness.OptbenchLM(model=model, batch_size=batch_size)
    output = lm_eval.simple_evaluate(model=lm, tasks=task_objects, task_manager=manager,
                                     limit=limit, batch_size=batch_size,
                                     num_fewshot=num_fewshot, log_samples=False)
  if bpb:
    output["validation"] = validation.validation_bits(model, workdir, limit, batch_size)
  output["optbench_jax"] = {"workdir": workdir, "step": model.step, "tasks": list(tasks),
                            "limit": limit}
  return results_lib.write(workdir, model.step, output), output


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  path, output = evaluate(args.workdir, tasks, args.include_path, args.limit, args.step,
                          args.batch_size, args.num_fewshot, args.bpb)
  if "results" in output:
    from lm_eval.utils import make_table  # pylint: disable=import-outside-toplevel
    print(make_table(output))
    if output.get("groups"):
      print(make_table(output, "groups"))
  if "validation" in output:
    print(_validation_line(output["validation"]))
  print(f"wrote {path}")
  return 0
