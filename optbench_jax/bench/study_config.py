"""Study configs: optimizers compared across model sizes, data budgets and batch sizes.

A study (``configs/studies/*.py``, ``get_config()`` returning a ConfigDict) is
one sweep per *scale* (a model size at a batch size), run as one experiment:
one command, one work directory, one results store, one status. Its fields:

  name                 str, for humans
  base_config          trainer config every model starts from
  overrides            trainer config values of every trial (nested or dotted)
  models               {label: {preset: trainer config path (replaces
                       base_config), overrides: trainer config values,
                       batch_sizes: [...] (this model's; default the study's)}};
                       each model needs a preset or overrides
  budgets              {chinchilla: [k, ...]} -- k * tokens_per_param * N
                       tokens, N the parameter count ``param_count`` names --
                       or {tokens: [D, ...]}. Steps = round(D / tokens per step)
  tokens_per_param     20 (Hoffmann et al. 2022's compute-optimal ratio)
  param_count          "non_embedding" (Wen et al. 2025) | "total" | "active"
  batch_sizes          global batch sizes (sequences); [] = each model's own
  seeds, evals_per_trial, reference_optimizer, optimizers, divergence,
  speedup, hosts_per_trial, trial_resources
                       as in a sweep (``sweep_config``), for every scale
  plan                 how hyperparameters are found at each scale:
    tune               model labels tuned fully at every budget and batch size
                       (strategy, threshold, trial_budget, edge_extension: as
                       in a sweep: the same trial budget for every optimizer)
    transfer           how the other models get their points: "same" (the best
                       point of the nearest tuned model at the same budget
                       multiple), "fit" (each numeric hyperparameter a power
                       law in N and D fitted to the tuned points, as Wen et al.
                       2025 carry their optima to 1.2B; ``transfer_rules``) or
                       "parametrization" (µP-style: the tuned point carried
                       unchanged to models trained under model.parametrization
                       mup / completep with base_width / base_depth set to the
                       tuned model's, so each optimizer's scaling rule,
                       ``optim/width_rules.py``, moves its per-parameter rates)
    local_search       {hp: [factors]}: after transfer, a coordinate descent
                       around the carried point over carried * factors ({} =
                       none), at most ``local_trial_budget`` trials per
                       optimizer, budget and scale
  share_stable_phase   True: trials that differ only in their budget share the
                       WSD stable phase (``train.branching``); False: every
                       trial trains from scratch
  extrapolate          parameter counts the report extrapolates speedups to
  noise_seeds          extra seeds of the reference's best point at each scale's
                       smallest budget, to measure the seed noise when ``seeds``
                       has one seed (default then: two more; [] otherwise): the
                       report calls a single-seed gap only when it exceeds it

``load`` validates all of it before any trial starts and raises one
:class:`StudyConfigError` naming the culprit; each scale's sweep is then
checked as a sweep is (``sweep_config.validate``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any, Mapping

import ml_collections

from optbench_jax import models
from optbench_jax.bench import sweep_config

PARAM_COUNTS = ("non_embedding", "total", "active")
TRANSFERS = ("same", "fit", "parametrization")
PLAN_KEYS = ("tune", "transfer", "strategy", "threshold", "trial_budget", "edge_extension",
             "local_search", "local_trial_budget")
REQUIRED = ("name", "base_config", "models", "budgets", "seeds", "optimizers", "plan")
SWEEP_FIELDS = ("evals_per_trial", "reference_optimizer", "divergence", "speedup",
                "hosts_per_trial", "trial_resources", "seeds", "optimizers")


class StudyConfigError(ValueError):
  """A study config that cannot run; the message names the culprit."""


def scale_label(model: str, batch_size: int | None, batch_sizes: list) -> str:
  return model if len(batch_sizes) <= 1 else f"{model}-b{batch_size}"


def _fail(message: str) -> None:
  raise StudyConfigError(message)


def _positive_numbers(name: str, values: Any) -> list[float]:
  if not isinstance(values, (list, tuple)) or not values:
    _fail(f"{name} must be a non-empty list, got {values!r}")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
      _fail(f"{name} must hold positive numbers, got {v!r}")
  if len(set(values)) != len(values):
    _fail(f"{name} repeats values: {list(values)}")
  return [float(v) for v in values]


def as_plain(study: Any) -> dict[str, Any]:
  """The study as a plain dict with defaults filled in and its own fields checked."""
  plain = sweep_config._plain(study)   # pylint: disable=protected-access
  missing = [key for key in REQUIRED if key not in plain]
  if missing:
    _fail(f"study config lacks required field(s): {', '.join(missing)}")
  plain["overrides"] = sweep_config.flatten(plain.get("overrides", {}))
  plain.setdefault("tokens_per_param", 20)
  plain.setdefault("param_count", "non_embedding")
  plain.setdefault("batch_sizes", [])
  plain.setdefault("share_stable_phase", True)
  plain.setdefault("extrapolate", [])
  seeds = list(plain["seeds"]) if isinstance(plain["seeds"], (list, tuple)) else []
  plain.setdefault("noise_seeds", [max(seeds) + 1, max(seeds) + 2] if len(seeds) == 1 else [])
  if plain["param_count"] not in PARAM_COUNTS:
    _fail(f"param_count must be one of {PARAM_COUNTS}, got {plain['param_count']!r}")
  if not isinstance(plain["share_stable_phase"], bool):
    _fail(f"share_stable_phase must be True or False, got {plain['share_stable_phase']!r}")
  budgets = plain["budgets"]
  if not isinstance(budgets, Mapping) or len(budgets) != 1 or \
     next(iter(budgets)) not in ("chinchilla", "tokens"):
    _fail(f"budgets must be {{'chinchilla': [k, ...]}} or {{'tokens': [D, ...]}}, got {budgets!r}")
  kind, values = next(iter(budgets.items()))
  _positive_numbers(f"budgets.{kind}", values)
  _positive_numbers("tokens_per_param", [plain["tokens_per_param"]])
  if plain["batch_sizes"]:
    sweep_config._check_positive_ints("batch_sizes", list(plain["batch_sizes"]))  # pylint: disable=protected-access
  if plain["noise_seeds"]:
    sweep_config._check_positive_ints("noise_seeds", list(plain["noise_seeds"]))  # pylint: disable=protected-access
    if set(plain["noise_seeds"]) & set(seeds):
      _fail(f"noise_seeds {plain['noise_seeds']} repeat seeds {seeds}")
  if plain["extrapolate"]:
    _positive_numbers("extrapolate", plain["extrapolate"])
  if not isinstance(plain["models"], Mapping) or not plain["models"]:
    _fail("models must map labels to {preset: ..., overrides: {...}}; it is empty")
  for label, spec in plain["models"].items():
    if not isinstance(spec, Mapping) or not set(spec) & {"preset", "overrides"} or \
       set(spec) - {"preset", "overrides", "batch_sizes"}:
      _fail(f"models.{label} must have a preset (a trainer config file) and/or overrides "
            f"(and may have batch_sizes), got {spec!r}")
    spec["overrides"] = sweep_config.flatten(spec.get("overrides", {}))
    if spec.get("batch_sizes"):
      sweep_config._check_positive_ints(f"models.{label}.batch_sizes",  # pylint: disable=protected-access
                                        list(spec["batch_sizes"]))
  plan = dict(plain["plan"])
  unknown = sorted(set(plan) - set(PLAN_KEYS))
  if unknown:
    _fail(f"plan has unknown field(s) {unknown}; valid: {', '.join(PLAN_KEYS)}")
  plan.setdefault("tune", list(plain["models"]))
  plan.setdefault("transfer", "same")
  plan.setdefault("strategy", "coordinate_descent")
  plan.setdefault("threshold", 3e-3)
  plan.setdefault("trial_budget", 0)
  plan["edge_extension"] = dict(plan.get("edge_extension", {}))
  plan["local_search"] = {k: list(v) for k, v in dict(plan.get("local_search", {})).items()}
  plan.setdefault("local_trial_budget", 0)
  plain["plan"] = plan
  return plain


def _check_plan(plain: Mapping[str, Any], params: Mapping[str, int]) -> None:
  plan = plain["plan"]
  tuned = plan["tune"]
  if not isinstance(tuned, (list, tuple)) or not tuned:
    _fail("plan.tune must name at least one model: every other scale transfers from a tuned "
          "one, and with nothing tuned there is nothing to transfer")
  unknown = [m for m in tuned if m not in plain["models"]]
  if unknown:
    _fail(f"plan.tune names model(s) {unknown} that are not among models "
          f"{sorted(plain['models'])}")
  if plan["transfer"] not in TRANSFERS:
    _fail(f"plan.transfer must be one of {TRANSFERS}, got {plan['transfer']!r}")
  carried = [m for m in plain["models"] if m not in tuned]
  if carried and plan["transfer"] == "fit" and len({params[m] for m in tuned}) < 2:
    _fail(f"plan.transfer='fit' fits each hyperparameter against the model size, which needs "
          f"tuned models of >= 2 sizes; plan.tune has {tuned}. Tune another size or use "
          "transfer='same'")
  for name, factors in plan["local_search"].items():
    _positive_numbers(f"plan.local_search.{name}", factors)
  if plan["local_search"] and not carried:
    _fail("plan.local_search refines transferred points, but every model is tuned")
  if not (isinstance(plan["local_trial_budget"], int) and plan["local_trial_budget"] >= 0):
    _fail(f"plan.local_trial_budget must be an integer >= 0, got {plan['local_trial_budget']!r}")


def _anchor_at_the_tuned_model(plain: Mapping[str, Any],
                               bases: Mapping[str, ml_collections.ConfigDict]) -> None:
  """transfer='parametrization': every model's base width and depth become the tuned
  model's, so its tuned point means the same at every size (µP's base shapes)."""
  tuned = plain["plan"]["tune"]
  shapes = {(bases[m].model.d_model, bases[m].model.num_layers) for m in tuned}
  if len(shapes) != 1:
    _fail(f"plan.transfer='parametrization' carries from one tuned width and depth; plan.tune "
          f"{tuned} has (d_model, num_layers) {sorted(shapes)}")
  (width, depth), = shapes
  for label, base in bases.items():
    if base.model.parametrization == "standard":
      _fail(f"models.{label}: plan.transfer='parametrization' needs model.parametrization "
            f"'mup' or 'completep' (set it in the study's overrides); it is 'standard'")
    if base.optimizer.lr_scaling == "none":
      _fail(f"models.{label}: plan.transfer='parametrization' needs the optimizers' scaling "
            f"rules, but optimizer.lr_scaling is 'none'")
    base.model.base_width, base.model.base_depth = int(width), int(depth)


def model_config(plain: Mapping[str, Any], label: str,
                 load=sweep_config.load_python_config) -> ml_collections.ConfigDict:
  """The trainer config of one model: its preset (or the base), the study's and the
  model's overrides."""
  spec = plain["models"][label]
  base = load(spec.get("preset") or plain["base_config"])
  config = copy.deepcopy(base)
  for where, overrides in (("overrides", plain["overrides"]),
                           (f"models.{label}.overrides", spec["overrides"])):
    for key, value in overrides.items():
      try:
        sweep_config._set_dotted(config, key, value, where)   # pylint: disable=protected-access
      except sweep_config.SweepConfigError as e:
        _fail(str(e))
  return config


def scales(plain: Mapping[str, Any], load=sweep_config.load_python_config
           ) -> dict[str, dict[str, Any]]:
  """{scale label: {model, batch_size, params, tokens_per_step, chinchilla (each budget's
  multiple), tokens (each budget's trained tokens), sweep, base}}: one validated sweep per model and batch size (``sweep`` its plain dict, ``base``
  its trainer config)."""
  out = {}
  kind, values = next(iter(plain["budgets"].items()))
  params = {}
  bases = {}
  for label in plain["models"]:
    try:
      bases[label] = model_config(plain, label, load)
    except sweep_config.SweepConfigError as e:
      _fail(f"models.{label}: {e}")
    counts = models.count_params(bases[label].model)
    params[label] = int(counts[plain["param_count"]])
  _check_plan(plain, params)
  if plain["plan"]["transfer"] == "parametrization":
    _anchor_at_the_tuned_model(plain, bases)
  for label, base in bases.items():
    batch_sizes = list(plain["models"][label].get("batch_sizes") or plain["batch_sizes"]) or [None]
    for batch in batch_sizes:
      scale_base = copy.deepcopy(base)
      if batch is not None:
        scale_base.data.global_batch_size = int(batch)
      per_step = sweep_config.tokens_per_step(scale_base)
      tokens = [k * plain["tokens_per_param"] * params[label] for k in values] \
          if kind == "chinchilla" else list(values)
      steps = [max(1, round(d / per_step)) for d in tokens]
      if len(set(steps)) != len(steps):
        _fail(f"models.{label}: budgets {list(values)} round to repeated step counts {steps} "
              f"at {per_step} tokens per step")
      sweep = {
          "name": f"{plain['name']}/{label}", "base_config": "<study model>",
          "overrides": {}, "budgets": steps, "strategy": plain["plan"]["strategy"],
          "threshold": plain["plan"]["threshold"],
          "trial_budget": plain["plan"]["trial_budget"],
          "edge_extension": plain["plan"]["edge_extension"],
          **{k: copy.deepcopy(plain[k]) for k in SWEEP_FIELDS if k in plain}}
      try:
        sweep = sweep_config.as_plain(sweep)
        if sweep["speedup"]["gamma"] == "fit" and len(steps) < 3:
          sweep["speedup"]["gamma"] = "loss_floor"   # the study fits across sizes instead
        sweep_config.validate(sweep, scale_base)
      except sweep_config.SweepConfigError as e:
        _fail(f"models.{label}" + (f" at batch size {batch}" if batch else "") + f": {e}")
      scale = scale_label(label, batch, batch_sizes)
      out[scale] = dict(
          model=label, batch_size=int(scale_base.data.global_batch_size),
          params=params[label], tokens_per_step=per_step,
          # The nominal multiple (budgets of one multiple line up across sizes; the steps'
          # rounding moves the tokens by < 1 step); for token budgets, tokens / (20 N).
          chinchilla=[float(k) for k in values] if kind == "chinchilla" else
          [d / (plain["tokens_per_param"] * params[label]) for d in
           [s * per_step for s in steps]],
          tokens=[s * per_step for s in steps], tuned=label in plain["plan"]["tune"],
          sweep=sweep, base=scale_base)
  tuned_batches = {s["batch_size"] for s in out.values() if s["tuned"]}
  for label, scale in out.items():
    if not scale["tuned"] and scale["batch_size"] not in tuned_batches:
      _fail(f"{label}: the plan transfers to batch size {scale['batch_size']}, at which no "
            f"model is tuned (tuned batch sizes: {sorted(tuned_batches)}); tune one there")
  return out


def fingerprint(plain: Mapping[str, Any], scale_map: Mapping[str, Mapping[str, Any]]) -> str:
  """sha256 of everything that decides the results: the study and every scale's config."""
  study = {k: v for k, v in plain.items() if k not in sweep_config.OPERATIONAL_FIELDS}
  bases = {label: sweep_config._plain(s["base"]) for label, s in scale_map.items()}  # pylint: disable=protected-access
  payload = json.dumps({"study": study, "bases": bases}, sort_keys=True, default=str)
  return hashlib.sha256(payload.encode()).hexdigest()
