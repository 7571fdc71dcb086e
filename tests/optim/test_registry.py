"""Registry: every listed name builds (where its module exists) and errors are helpful."""

import importlib

import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import registry

ELEMENTWISE = ["adamw", "nadamw", "adopt", "ademamix", "lion", "signum", "mars", "c_adamw",
               "c_lion", "adam_mini", "prodigy", "schedule_free_adamw"]


def test_names_sorted_and_complete():
  assert O.names() == sorted(O.names())
  assert set(ELEMENTWISE) <= set(O.names())


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_create_builds_every_elementwise_optimizer(name):
  tx = O.create(name, learning_rate=1e-3)
  assert isinstance(tx, optax.GradientTransformation)
  assert "learning_rate" in registry.hyperparameter_names(name)


def test_every_registered_factory_resolves_when_its_module_exists():
  for name in registry.builtin_names():
    module, function = registry._FACTORIES[name]  # pylint: disable=protected-access
    try:
      importlib.import_module(f"optbench_jax.optim.{module}")
    except ModuleNotFoundError:
      continue  # another issue's optimizer, not written yet
    assert callable(registry.factory(name)), name
    assert function


def test_unknown_name_suggests_close_names():
  with pytest.raises(ValueError, match="did you mean 'adamw'"):
    O.create("adamww", learning_rate=1e-3)


def test_unknown_hyperparameter_lists_valid_ones():
  with pytest.raises(TypeError, match=r"'weight_decy' \(did you mean 'weight_decay'\?\).*valid: .*b2"):
    O.create("adopt", learning_rate=1e-3, weight_decy=0.1)


def test_bad_value_raises_value_error():
  with pytest.raises(ValueError, match="b2"):
    O.create("ademamix", learning_rate=1e-3, b2=1.5)
