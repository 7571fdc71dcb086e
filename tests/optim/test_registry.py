"""Registry: every built-in name resolves and builds, registration round-trips, errors help."""

import importlib

import optax
import pytest

import optbench_jax.optim as O
from optbench_jax.optim import registry


def test_names_lists_builtins_and_registered_factories_until_unregistered():
  def my_sgd(learning_rate, weight_decay=0.0):
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate))

  assert "my_sgd" not in registry.names()
  registry.register("my_sgd", my_sgd)
  try:
    assert set(registry.builtin_names()) | {"my_sgd"} <= set(registry.names())
    assert registry.factory("my_sgd") is my_sgd
    assert isinstance(O.create("my_sgd", learning_rate=0.1), optax.GradientTransformation)
    with pytest.raises(ValueError, match="already registered"):
      registry.register("my_sgd", my_sgd)
    with pytest.raises(ValueError, match="already registered"):
      registry.register("adamw", my_sgd)
  finally:
    registry.unregister("my_sgd")
  assert "my_sgd" not in registry.names()
  assert set(registry.builtin_names()) <= set(registry.names())
  with pytest.raises(ValueError, match="unknown optimizer 'my_sgd'"):
    registry.factory("my_sgd")


@pytest.mark.parametrize("name", registry.builtin_names())
def test_every_builtin_resolves_to_its_module_function_and_builds(name):
  """A built-in whose module or function is missing fails here (nothing is skipped)."""
  module, function = registry._FACTORIES[name]  # pylint: disable=protected-access
  assert registry.factory(name) is getattr(
      importlib.import_module(f"optbench_jax.optim.{module}"), function)
  assert "learning_rate" in registry.hyperparameter_names(name)
  assert isinstance(O.create(name, learning_rate=1e-3), optax.GradientTransformation)


def test_unknown_name_suggests_close_names():
  with pytest.raises(ValueError, match="did you mean 'adamw'"):
    O.create("adamww", learning_rate=1e-3)


def test_unknown_hyperparameter_lists_valid_ones():
  with pytest.raises(TypeError, match=r"'weight_decy' \(did you mean 'weight_decay'\?\).*valid: .*b2"):
    O.create("adopt", learning_rate=1e-3, weight_decy=0.1)


def test_bad_value_raises_value_error():
  with pytest.raises(ValueError, match="b2"):
    O.create("ademamix", learning_rate=1e-3, b2=1.5)
