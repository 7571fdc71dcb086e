"""Name -> factory map for every optimizer, used by configs, the trainer and sweeps.

``names()`` lists the registered optimizers; ``create(name, **hparams)`` builds
one. Unknown names raise ``ValueError`` naming the closest valid names; unknown
hyperparameters raise ``TypeError`` naming the valid ones. Nothing here knows
any optimizer's math: the table only maps names to factories.
"""

from __future__ import annotations

import difflib
import importlib
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
}


def names() -> list[str]:
  """Every registered optimizer name, sorted."""
  return sorted(_FACTORIES)


def factory(name: str) -> Callable[..., optax.GradientTransformation]:
  """The factory function registered under ``name``."""
  if name not in _FACTORIES:
    close = difflib.get_close_matches(name, _FACTORIES, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown optimizer {name!r}{hint} (valid: {', '.join(names())})")
  module_name, function_name = _FACTORIES[name]
  module = importlib.import_module(f"optbench_jax.optim.{module_name}")
  return getattr(module, function_name)


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
