"""The evaluation-parameters hook: which parameters a run evaluates with.

Most optimizers evaluate at the training parameters. Some evaluate at another
iterate: schedule-free methods at the averaged sequence x (Defazio et al.
2024), SPlus and other iterate-averaging methods at an EMA of the parameters.
Such an optimizer says so through its own state: a state node (a NamedTuple
anywhere in the, possibly chained or wrapped, optimizer state) with a method

    def eval_params(self, params) -> params-shaped tree

:func:`eval_params` finds that node and calls it; the trainer evaluates (and
reports the final loss) with the result. Nothing looks at optimizer names, so
an optimizer written outside this package gets the same treatment.
"""

from __future__ import annotations

from typing import Any

import jax


def _has_hook(node: Any) -> bool:
  return callable(getattr(node, "eval_params", None)) and not isinstance(node, jax.Array)


def eval_params(opt_state: Any, params: Any) -> Any:
  """``params`` as the optimizer evaluates them (see the module docstring).

  Raises ValueError when the state holds more than one hook (which one would
  be meant is ambiguous).
  """
  hooks = [node for node in jax.tree.leaves(opt_state, is_leaf=_has_hook) if _has_hook(node)]
  if not hooks:
    return params
  if len(hooks) > 1:
    raise ValueError(f"the optimizer state holds {len(hooks)} eval_params hooks "
                     f"({', '.join(type(h).__name__ for h in hooks)}); expected at most one")
  return hooks[0].eval_params(params)
