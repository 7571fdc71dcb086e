"""Sweep configs: loading, validation, fingerprint, and the trainer config of each trial.

A sweep config (``configs/sweeps/*.py``, ``get_config()`` returning a ConfigDict)
has these fields:

  name                 str, for humans
  base_config          path of the trainer config every trial starts from
                       (relative to the repository root or absolute)
  overrides            trainer config values applied to every trial, nested
                       ({"train": {"log_every": 5}}) or as dotted keys
  evals_per_trial      > 0: set train.eval_every = steps // evals_per_trial
  reference_optimizer  the optimizer speedups are measured against ("adamw")
  budgets              training lengths in optimizer steps (train.steps);
                       tokens = steps * global_batch_size * seq_len
  tune_budgets         budgets tuned (default: all); every other budget runs the
                       best config of the largest tuned budget below it (else
                       the smallest tuned one) -- hyperparameter transfer, to
                       save trials in small studies
  seeds                tuning runs on seeds[0]; each best config is re-run on
                       the other seeds (for the bootstrap interval)
  strategy             "grid" | "coordinate_descent"
  threshold            coordinate descent: adopt a change only if it improves
                       the final loss by more than this (Wen et al.: 3e-3)
  trial_budget         coordinate descent: the same cap on trials for every
                       optimizer and budget (0 = none)
  edge_extension       {hp: k}: when the best value of hp is at an edge of its
                       grid, try up to k more values beyond that edge,
                       continuing the grid's spacing (both strategies; see
                       bench/tuning.py). The same for every optimizer. {} = off
  divergence           loss_threshold, after_steps, after_fraction: a trial
                       whose training loss is >= loss_threshold at a step >=
                       min(after_steps, after_fraction * budget) has diverged
                       (Wen et al.: 6 after 2000 steps); NaN/Inf always does
  speedup              gamma ("fit" | "loss_floor" | a number), num_bootstrap
  optimizers           {label: {optimizer: registered name (default: the label),
                       baseline: {hp: v}, grid: {hp: [v, ...]},
                       overrides: trainer config values, as above}}
  hosts_per_trial      processes (hosts) each trial runs as, one multi-host job
                       (default 1); the global batch and the trial's mesh must
                       split over them. The local executor starts them on this
                       machine, splitting its forced CPU device count; a cluster
                       executor places one per node. Operational: not part of the
                       fingerprint (results agree to the multi-host tolerance)
  trial_resources      what each host (process) of a trial needs on its node, in
                       Ray's resource names: {"GPU": 8}, {"TPU": 4}, {"CPU": 4},
                       custom resources (default {"CPU": 1}). Used by
                       ``--executor=ray`` (one placement-group bundle per host);
                       the local executor ignores it. Operational, like
                       hosts_per_trial

Every check of the sweep itself runs in :func:`validate` and raises one
:class:`SweepConfigError` naming the culprit, before any trial starts; the
trainer's own checks of the trials (and the contract for an optimizer from
outside the package) are ``trial_preflight``'s.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import os
import re
from typing import Any, Mapping

import ml_collections

from optbench_jax import config as config_lib
from optbench_jax.bench import search_space

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STRATEGIES = ("grid", "coordinate_descent")
REQUIRED = ("name", "base_config", "budgets", "seeds", "strategy", "optimizers")


class SweepConfigError(ValueError):
  """A sweep config that cannot run; the message names the culprit."""


def resolve_path(path: str) -> str:
  """``path`` as given if it exists, else relative to the repository root."""
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  return os.path.join(REPO_ROOT, path)


def load_python_config(path: str) -> ml_collections.ConfigDict:
  """Calls ``get_config()`` of the config file at ``path``."""
  full = resolve_path(path)
  if not os.path.exists(full):
    raise SweepConfigError(f"config file {path!r} not found (looked at {full})")
  spec = importlib.util.spec_from_file_location(f"_optbench_config_{abs(hash(full))}", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise SweepConfigError(f"config file {path!r} defines no get_config()")
  return module.get_config()


def _plain(value: Any) -> Any:
  """ConfigDicts, FieldReferences and tuples as plain JSON-able Python values."""
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested override mappings as dotted keys: {"train": {"steps": 5}} -> {"train.steps": 5}.

  ConfigDict keys cannot contain dots, so sweep config files write overrides
  nested; plain-dict sweeps may use either form.
  """
  flat = {}
  for key, value in overrides.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, Mapping) and not dotted.endswith("optimizer.hparams"):
      flat.update(flatten(value, dotted + "."))
    else:
      flat[dotted] = value
  return flat


def as_plain(sweep: Any) -> dict[str, Any]:
  """The sweep config as a plain dict with defaults filled in."""
  plain = _plain(sweep)
  missing = [key for key in REQUIRED if key not in plain]
  if missing:
    raise SweepConfigError(f"sweep config lacks required field(s): {', '.join(missing)}")
  plain["overrides"] = flatten(plain.get("overrides", {}))
  plain.setdefault("evals_per_trial", 0)
  plain.setdefault("reference_optimizer", "adamw")
  plain.setdefault("threshold", 3e-3)
  plain.setdefault("trial_budget", 0)
  plain["edge_extension"] = dict(plain.get("edge_extension", {}))
  plain.setdefault("tune_budgets", list(plain["budgets"]))
  divergence = dict(loss_threshold=6.0, after_steps=2000, after_fraction=1.0)
  divergence.update(plain.get("divergence", {}))
  plain["divergence"] = divergence
  plain.setdefault("hosts_per_trial", 1)
  plain["trial_resources"] = dict(plain.get("trial_resources", {"CPU": 1}))
  speedup = dict(gamma="fit", num_bootstrap=1000)
  speedup.update(plain.get("speedup", {}))
  plain["speedup"] = speedup
  for name, spec in plain["optimizers"].items():
    if not isinstance(spec, Mapping):
      raise SweepConfigError(f"optimizers.{name} must be a mapping with baseline/grid/overrides")
    unknown = sorted(set(spec) - {"optimizer", "baseline", "grid", "overrides"})
    if unknown:
      raise SweepConfigError(f"optimizers.{name} has unknown field(s) {unknown}; "
                             "valid: optimizer, baseline, grid, overrides")
    spec.setdefault("baseline", {})
    spec.setdefault("grid", {})
    spec["overrides"] = flatten(spec.get("overrides", {}))
  return plain


# Fields that say how trials run, not what they compute: left out of the fingerprint, so
# a sweep can move between executors or machines and keep its store.
OPERATIONAL_FIELDS = ("hosts_per_trial", "trial_resources")


def fingerprint(plain: Mapping[str, Any], base: Mapping[str, Any]) -> str:
  """sha256 of everything that determines the results: the sweep and the resolved base config."""
  sweep = {k: v for k, v in plain.items() if k not in OPERATIONAL_FIELDS}
  payload = json.dumps({"sweep": sweep, "base": base}, sort_keys=True, default=str)
  return hashlib.sha256(payload.encode()).hexdigest()


def registry_name(label: str, spec: Mapping[str, Any]) -> str:
  """The optimizer an ``optimizers`` entry trains with: its ``optimizer`` field, else its
  label (two entries of one optimizer, e.g. AdamW at a default and AdamW tuned, need it)."""
  return spec.get("optimizer", label)


def trial_id(optimizer: str, hparams: Mapping[str, Any], budget_steps: int, seed: int,
             scale: str = "") -> str:
  """A deterministic, filesystem-safe id: readable prefix + hash of the exact settings.

  ``scale``: a study's model size (and batch size) label; a sweep has none.
  """
  settings = [optimizer, dict(hparams), int(budget_steps), int(seed)] + ([scale] if scale else [])
  digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  readable = re.sub(r"[^A-Za-z0-9_-]+", "_", optimizer)   # import paths: "pkg.mod:f" -> "pkg_mod_f"
  prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", scale) + "-" if scale else ""
  return f"{prefix}{readable}-{budget_steps}steps-seed{seed}-{digest}"


def _set_dotted(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
  try:
    config_lib.override(config, key, value)
  except config_lib.ConfigError as e:
    raise SweepConfigError(f"{where}: {e}") from None


def trial_config(plain: Mapping[str, Any], base: ml_collections.ConfigDict, optimizer: str,
                 hparams: Mapping[str, Any], budget_steps: int, seed: int
                 ) -> ml_collections.ConfigDict:
  """The full trainer config of one trial.

  Order: base config, the sweep's overrides, the optimizer's overrides, then the
  trial's name/hyperparameters/steps/seed. ``optimizer.hparams`` is replaced,
  not merged, so the base config's AdamW betas never leak into another optimizer.
  """
  config = copy.deepcopy(base)
  for key, value in plain["overrides"].items():
    _set_dotted(config, key, value, "overrides")
  spec = plain["optimizers"][optimizer]
  for key, value in spec["overrides"].items():
    _set_dotted(config, key, value, f"optimizers.{optimizer}.overrides")
  config.optimizer.name = registry_name(optimizer, spec)
  config.optimizer.hparams = ml_collections.ConfigDict()
  for name, value in sorted(hparams.items()):
    _set_dotted(config, search_space.config_key(name), value, f"optimizers.{optimizer}")
  config.train.steps = int(budget_steps)
  if plain["evals_per_trial"]:
    config.train.eval_every = max(1, int(budget_steps) // int(plain["evals_per_trial"]))
  config.seed = int(seed)
  config.data.shuffle_seed = int(seed)
  return config


def tokens_per_step(config: ml_collections.ConfigDict) -> int:
  return int(config.data.global_batch_size) * int(config.data.seq_len)


def divergence_step(plain: Mapping[str, Any], budget_steps: int) -> int:
  """First step at which the loss-threshold rule applies for a run of ``budget_steps``."""
  rule = plain["divergence"]
  return int(min(rule["after_steps"], math.ceil(rule["after_fraction"] * budget_steps)))


def _check_positive_ints(name: str, values: Any) -> None:
  if not isinstance(values, (list, tuple)) or not values:
    raise SweepConfigError(f"{name} must be a non-empty list, got {values!r}")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "budgets" else 0):
      raise SweepConfigError(f"{name} must hold integers >= {1 if name == 'budgets' else 0}, "
                             f"got {v!r}")
  if len(set(values)) != len(values):
    raise SweepConfigError(f"{name} repeats values: {values}")


def validate(plain: Mapping[str, Any], base: ml_collections.ConfigDict) -> None:
  """Every check a sweep needs before its first trial (see the module docstring)."""
  if plain["strategy"] not in STRATEGIES:
    raise SweepConfigError(f"strategy {plain['strategy']!r} is not one of {STRATEGIES}")
  _check_positive_ints("budgets", plain["budgets"])
  _check_positive_ints("seeds", plain["seeds"])
  tuned = plain["tune_budgets"]
  if not tuned or not set(tuned) <= set(plain["budgets"]):
    raise SweepConfigError(f"tune_budgets {tuned} must be a non-empty subset of budgets "
                           f"{plain['budgets']}")
  if not plain["optimizers"]:
    raise SweepConfigError("optimizers is empty: nothing to sweep")
  if plain["reference_optimizer"] not in plain["optimizers"]:
    raise SweepConfigError(
        f"reference_optimizer {plain['reference_optimizer']!r} is not among the swept "
        f"optimizers {sorted(plain['optimizers'])}; speedups need it")
  hosts = plain["hosts_per_trial"]
  if not (isinstance(hosts, int) and not isinstance(hosts, bool) and hosts >= 1):
    raise SweepConfigError(f"hosts_per_trial must be an integer >= 1, got {hosts!r}")
  resources = plain["trial_resources"]
  bad = {k: v for k, v in resources.items()
         if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0}
  if bad or not any(v > 0 for v in resources.values()):
    raise SweepConfigError(
        f"trial_resources must map resource names to numbers >= 0, at least one > 0 "
        f"(e.g. {{'GPU': 8}}), got {resources!r}")
  if not (isinstance(plain["trial_budget"], int) and plain["trial_budget"] >= 0):
    raise SweepConfigError(f"trial_budget must be an integer >= 0, got {plain['trial_budget']!r}")
  gamma = plain["speedup"]["gamma"]
  if not (gamma in ("fit", "loss_floor") or isinstance(gamma, (int, float))):
    raise SweepConfigError(f"speedup.gamma must be 'fit', 'loss_floor' or a number, got {gamma!r}")
  if gamma == "fit" and len(plain["budgets"]) < 3:
    raise SweepConfigError(
        f"speedup.gamma='fit' needs >= 3 budgets to fit alpha, beta and gamma; got "
        f"{len(plain['budgets'])}. Add budgets or fix gamma ('loss_floor' or a number)")
  for key in ("overrides",):
    for dotted in plain[key]:
      _set_dotted(copy.deepcopy(base), dotted, plain[key][dotted], key)
  for name, spec in plain["optimizers"].items():
    search_space.validate(registry_name(name, spec), spec["grid"], spec["baseline"])
    search_space.validate_edge_extension(name, spec["grid"], plain["edge_extension"])
    if plain["strategy"] == "coordinate_descent":
      missing = sorted(set(spec["grid"]) - set(spec["baseline"]))
      if missing:
        raise SweepConfigError(
            f"optimizers.{name}: coordinate descent starts from the baseline, which lacks "
            f"{', '.join(missing)}")
    for budget in plain["budgets"]:
      for point in grid_points(spec["grid"], spec["baseline"]):
        config = trial_config(plain, base, name, point, budget, plain["seeds"][0])
        warmup = int(config.optimizer.schedule.warmup_steps)
        if budget <= warmup:
          raise SweepConfigError(
              f"optimizers.{name}: budget {budget} steps is not longer than the warmup "
              f"({warmup} steps); shorten warmup_steps or drop the budget")


def grid_points(grid: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[dict]:
  """The baseline plus every single-value change: covers every grid value once (what the
  schema and the trainer's pre-flight check of a grid)."""
  start = {name: values[0] for name, values in grid.items()}
  start.update(baseline)
  points = [start]
  for name, values in grid.items():
    points.extend({**start, name: v} for v in values)
  return points


def load(sweep: Any) -> tuple[dict[str, Any], ml_collections.ConfigDict, str]:
  """Validated (plain sweep dict, base trainer config, fingerprint); raises SweepConfigError."""
  plain = as_plain(sweep)
  base = load_python_config(plain["base_config"])
  validate(plain, base)
  return plain, base, fingerprint(plain, _plain(base))


def transfer_source(plain: Mapping[str, Any], budget: int) -> int:
  """The tuned budget whose best config an untuned ``budget`` reuses."""
  tuned = sorted(plain["tune_budgets"])
  below = [b for b in tuned if b <= budget]
  return below[-1] if below else tuned[0]
