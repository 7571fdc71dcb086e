"""Downstream evaluation of a trained run: lm-evaluation-harness tasks and validation bits per byte.

    python -m optbench_jax.evaluate --workdir=W --tasks=hellaswag,arc_easy [--include_path=DIR]
        [--limit=N] [--step=N] [--batch_size=N] [--no-bpb]

* ``harness``: ``OptbenchLM``, lm-eval's ``LM`` interface over ``inference.Model``
  (registered as ``optbench_jax``), so every harness task runs unchanged.
* ``tasks``: task names checked, and their datasets loaded, before the model is.
* ``validation``: bits per byte (bits per token for a synthetic corpus) on the
  run's validation split.
* ``results``: ``W/evals/<step>.json``, the harness's own result dict plus ``validation``.
* ``cli``: the command line.
* ``in_training``: ``DownstreamEvaluator``, the same tasks on a training run's live
  parameters at its evaluation points (``train.downstream``; ``trainers.lm`` passes it
  to ``train.run``).

This module imports nothing, so the submodules can share :class:`EvaluationError`.
"""


class EvaluationError(ValueError):
  """An evaluation the user asked for cannot run (a task, its data, the output place); one line."""
