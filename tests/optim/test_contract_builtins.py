"""Every built-in optimizer passes the contract (``optim.contract``), one table for all.

In the style of optax's ``_common_test``: the generic properties -- returns a
transformation, jit == eager, stable state, bfloat16 parameters,
``inject_hyperparams``, learning rates follow the schedule, sharded ==
unsharded, a stacked leaf moves as its layers, a non-convex loss falls, and the
memory / speed measurement on the small tree (what ``python -m
optbench_jax.optim.check NAME`` runs by default) -- are checked here for every name in ``registry.builtin_names()``, so a newly
registered optimizer is covered without a line of test. Each optimizer runs at
its defaults plus ``contract.hparams_for(name)`` (the documented exceptions).
The per-optimizer files test only what is specific: the trajectory against an
independent NumPy reference of the paper's equations, options, layouts.

The sharded check needs 8 devices; ``tests/conftest.py`` forces 8 CPU devices.
"""

import pytest

from optbench_jax.optim import contract, registry


@pytest.mark.parametrize("name", registry.builtin_names())
def test_builtin_passes_the_contract(name):
  results = contract.run_checks(registry.factory(name), contract.hparams_for(name),
                                tree="small")
  assert [r.name for r in results] == list(contract.CHECKS)
  failed = [f"{r.name}: {r.note}" for r in results if not r.passed]
  assert not failed, f"{name} fails the contract:\n" + "\n".join(failed)
