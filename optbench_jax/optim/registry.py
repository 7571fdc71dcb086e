"""Name -> factory map for every optimizer, used by configs, the trainer and sweeps.

``names()`` lists the registered optimizers; ``create(name, **hparams)`` builds
one. Unknown names raise ``ValueError`` naming the closest valid names; unknown
hyperparameters raise ``TypeError`` naming the valid ones. Nothing here knows
any optimizer's math: the table only maps names to factories.

Optimizers from outside the package, accepted wherever a name is (the
trainer's ``optimizer.name``, sweep configs, ``create``, reports):

* an import path ``"my_pkg.my_module:make_optimizer"`` (the module must be
  importable: installed, or on ``PYTHONPATH``; a sweep adds its working
  directory to its trials' path);
* a name an installed package registers under the entry-point group
  ``optbench_jax.optimizers`` (``[project.entry-points."optbench_jax.optimizers"]
  my_opt = "my_pkg.my_module:make_optimizer"``), as pytest plugins register;
* ``register(name, factory)`` from code (in the process that trains: a sweep's
  trials are new processes, so use an import path or an entry point there).

**The factory contract** (what a factory may take, which arguments are
learning rates, who owns warmup) is stated in ``factory_contract``, and
checked by ``python -m optbench_jax.optim.check``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
from typing import Any, Callable

import optax

# name -> (module inside optbench_jax.optim, factory function). Imported lazily so
# that listing names never pays for importing every optimizer.
_FACTORIES: dict[str, tuple[str, str]] = {
    "adamw": ("adam", "adamw"),
    "nadamw": ("adam", "nadamw"),
    "adopt": ("adopt", "adopt"),
    "ademamix": ("ademamix", "ademamix"),
    "lion": ("sign", "lion"),
    "signum": ("sign", "signum"),
    "mars": ("mars", "mars"),
    "c_adamw": ("cautious", "c_adamw"),
    "c_lion": ("cautious", "c_lion"),
    "adam_mini": ("adam_mini", "adam_mini"),
    "prodigy": ("prodigy", "prodigy"),
    "schedule_free_adamw": ("schedule_free", "schedule_free_adamw"),
    "muon": ("muon", "muon"),
    "d_muon": ("muon", "d_muon"),
    "normuon": ("normuon", "normuon"),
    "adamuon": ("adamuon", "adamuon"),
    "conda": ("conda", "conda"),
    "scion": ("scion", "scion"),
    "soap": ("soap", "soap"),
    "kron": ("kron", "kron"),
    "sophia": ("sophia", "sophia"),
    "dion": ("dion", "dion"),
    "splus": ("splus", "splus"),
    "adamh": ("hyperball", "adamh"),
    "muonh": ("hyperball", "muonh"),
}


ENTRY_POINT_GROUP = "optbench_jax.optimizers"
_REGISTERED: dict[str, Callable[..., optax.GradientTransformation]] = {}


def _entry_points() -> dict[str, Any]:
  return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def builtin_names() -> list[str]:
  """The optimizers this package implements, sorted."""
  return sorted(_FACTORIES)


def names() -> list[str]:
  """Every optimizer name: built in, ``register``-ed and entry-point plugins, sorted."""
  return sorted(set(_FACTORIES) | set(_REGISTERED) | set(_entry_points()))


def is_import_path(name: str) -> bool:
  """``"package.module:function"``: an optimizer factory outside the registry."""
  module, sep, function = name.partition(":")
  return bool(sep and module and function)


def register(name: str, factory_fn: Callable[..., optax.GradientTransformation],
             overwrite: bool = False) -> None:
  """Registers ``factory_fn`` under ``name`` (see the module docstring for the contract)."""
  if not callable(factory_fn):
    raise TypeError(f"register({name!r}, ...): the factory must be callable, got "
                    f"{type(factory_fn).__name__}")
  if not name or is_import_path(name):
    raise ValueError(f"register: {name!r} is not a valid optimizer name (no ':')")
  if not overwrite and (name in _FACTORIES or name in _REGISTERED):
    raise ValueError(f"optimizer {name!r} is already registered (pass overwrite=True)")
  _REGISTERED[name] = factory_fn


def unregister(name: str) -> None:
  """Removes a name added by :func:`register`."""
  _REGISTERED.pop(name, None)


def _import_path(name: str) -> Callable[..., optax.GradientTransformation]:
  module_name, _, attribute = name.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"optimizer {name!r}: cannot import module {module_name!r} ({e}); "
                     "it must be installed or on PYTHONPATH") from None
  target = module
  for part in attribute.split("."):
    if not hasattr(target, part):
      raise ValueError(f"optimizer {name!r}: module {module_name!r} has no {attribute!r}")
    target = getattr(target, part)
  if not callable(target):
    raise ValueError(f"optimizer {name!r}: {attribute!r} is not callable")
  return target


def factory(name: str) -> Callable[..., optax.GradientTransformation]:
  """The factory function registered under ``name`` (or at the import path ``name``)."""
  if name in _FACTORIES:
    module_name, function_name = _FACTORIES[name]
    module = importlib.import_module(f"optbench_jax.optim.{module_name}")
    return getattr(module, function_name)
  if name in _REGISTERED:
    return _REGISTERED[name]
  if is_import_path(name):
    return _import_path(name)
  plugins = _entry_points()
  if name in plugins:
    try:
      return plugins[name].load()
    except Exception as e:  # pylint: disable=broad-except  (a broken plugin: name it)
      raise ValueError(f"optimizer {name!r} (entry point {plugins[name].value!r} in group "
                       f"{ENTRY_POINT_GROUP!r}) failed to load: {e}") from None
  close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
  hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  raise ValueError(f"unknown optimizer {name!r}{hint} (valid: {', '.join(names())}, or an "
                   f"import path 'package.module:function')")


def hyperparameter_names(name: str) -> list[str]:
  """The keyword arguments that ``create(name, ...)`` accepts."""
  return list(inspect.signature(factory(name)).parameters)


def create(name: str, **hparams: Any) -> optax.GradientTransformation:
  """Builds optimizer ``name`` with ``hparams``, checking names before calling."""
  build = factory(name)
  valid = hyperparameter_names(name)
  unknown = sorted(set(hparams) - set(valid))
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
      hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"unknown hyperparameter(s) for optimizer {name!r}: {', '.join(hints)}; "
        f"valid: {', '.join(valid)}")
  return build(**hparams)
