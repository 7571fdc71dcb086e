"""The trainer's configuration: its schema and defaults, overlay, resolve and validation.

The one home of the config. ``base_config()`` is the schema with its
defaults; any key not defined there is a typo and is rejected.
``configs/*.py`` are data files that start from ``base_config()`` (re-exported
by ``configs/base.py``) and override fields; ``configs/from_json.py`` loads a
saved config through :func:`load_json`; a sweep sets trial keys through
:func:`override`. :func:`resolve` overlays a (possibly partial) config on the
defaults and checks every key and value, once per run, before anything is
compiled; every check raises one :class:`ConfigError` naming the culprit.

Sentinels: 0 means "derive" (``ffn_dim``: the SwiGLU rule; ``num_kv_heads``:
``num_heads``; ``capacity_factor``: dropless), -1 means "fill" for mesh axes.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, Mapping

import ml_collections

from optbench_jax import models
from optbench_jax import workdir_lock
from optbench_jax.optim.state_sharding import FACTOR_SHARDINGS


def base_config() -> ml_collections.ConfigDict:
  """The full schema with its defaults: every config starts from it and overrides fields."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      kind="llama",            # llama | moe
      num_layers=12,
      d_model=768,
      num_heads=12,
      num_kv_heads=0,          # 0 = num_heads
      ffn_dim=0,               # 0 = next multiple of 256 above int(8 d / 3)
      vocab_size=50304,        # GPT-2 BPE (50257) padded to a multiple of 64
      tie_embeddings=True,
      rope_theta=10000.0,
      norm_eps=1e-5,
      init_std=0.02,           # residual output projections: init_std / sqrt(2 L)
      z_loss=0.0,              # output-logit z-loss coefficient
      # None = auto: unrolled on CPU, a scan on GPU/TPU (models.llama.scans_layers)
      scan_layers=ml_collections.config_dict.placeholder(bool),
      remat="none",            # none | full | dots
      # auto | xla | blocked | cudnn | splash (auto: cuDNN on GPU, splash on TPU, blocked on CPU)
      attention_impl="auto",
      compute_dtype="float32", # bfloat16 on GPU/TPU
      param_dtype="float32",
      num_experts=0,           # >= 2 for kind=moe (checked by models.ModelSpec)
      experts_top_k=2,
      capacity_factor=0.0,     # 0 = dropless (ragged_dot); > 0 = capacity-factor path
      moe_aux_loss_coef=0.1,   # Switch load balance, divided by num_layers
      moe_z_loss_coef=0.01,    # router z-loss, divided by num_layers
      # Width / depth parametrization (models/parametrization.py): standard | mup | completep.
      parametrization="standard",
      base_width=256,          # mup / completep: d_model at which they equal the tuned base
      base_depth=2,            # completep: residual branches x base_depth / num_layers
      mup_embedding_multiplier=10.0,  # mup / completep: embedding output x this
      mup_output_multiplier=1.0,      # mup / completep: logits x this x base_width / d_model
  ))

  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",      # synthetic | shards
      path="",                 # token-shard directory (source=shards); "" = <workdir>/data for synthetic
      seq_len=512,
      global_batch_size=256,   # sequences per optimizer step, across all hosts
      grad_accum_steps=1,      # micro-batches per step
      shuffle_seed=0,
      prefetch_threads=2,
      # synthetic corpus (see optbench_jax.data.synthetic)
      synthetic_vocab_size=512,
      synthetic_branching=8,
      synthetic_seed=1234,
      synthetic_train_tokens=4_000_000,
      synthetic_val_tokens=200_000,
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",            # any of optbench_jax.optim.names()
      learning_rate=1e-3,
      weight_decay=0.1,
      grad_clip=0.5,           # global-norm clipping; 0 disables
      decay_embeddings=False,
      # Per-parameter rates across width / depth (optim/width_rules.py): "auto" = the
      # optimizer's own rule under model.parametrization mup / completep, none under
      # standard; "none"; or one of the optimizer's rules ("mup", "spectral", "rms_match").
      lr_scaling="auto",
      # "decoupled": p -= c lr (u + wd p) (today's); "independent": p -= c lr u + lr (wd / m_w) p.
      weight_decay_scaling="decoupled",
      qk_clip_tau=0.0,         # QK-clip (Kimi K2's MuonClip) threshold, any optimizer; 0 = off
      hparams=ml_collections.ConfigDict(),  # extra optimizer kwargs (b1, b2, ...)
      schedule=ml_collections.ConfigDict(dict(
          name="cosine",       # constant | linear | cosine | paper_cosine | wsd
          warmup_steps=2000,
          final_fraction=0.1,
          decay_fraction=0.2,  # wsd only
          decay_shape="linear",  # wsd only
      )),
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=16000,
      log_every=50,
      eval_every=1000,
      eval_batches=16,
      full_eval_at_end=True,
      checkpoint_every=1000,
      keep_checkpoints=2,
      # Checkpoints kept whatever keep_checkpoints says: the points where runs of the same
      # settings but shorter budgets leave this run's stable phase (train/branching.py).
      keep_steps=[],
      # Start from another run's checkpoint at branch_step instead of from scratch, when this
      # work directory has no checkpoint yet; checked to compute exactly the same steps.
      branch_from="",
      branch_step=0,
      profile=False,           # a jax.profiler trace of 5 steady steps (train/profiling.py)
      # gs:// work directories: the longest one wait on storage may take (a checkpoint the run
      # must wait for, a metrics upload, a lock renewal) before the trainer exits with status 3
      # and one error line (train/storage_deadline.py). It must cover writing the largest
      # checkpoint, and stay below the lock's stale window: at most 240 s (workdir_lock).
      storage_timeout_s=120.0,
      # Every N steps, per-matrix weight/update norms, relative and angular update
      # (train/dynamics.py) into metrics.jsonl and dynamics.png; 0 = off.
      dynamics_every=0,
      # Averaged weights evaluated beside the raw ones (train/weight_averaging.py), any
      # optimizer; reported as eval_loss_ema / eval_loss_tail, never as eval_loss.
      weight_averaging=ml_collections.ConfigDict(dict(
          ema_decay=0.0,       # in [0, 1); 0 = off. ema = decay ema + (1 - decay) theta
          ema_start=0,         # the step the EMA starts from (set to theta there)
          tail_fraction=0.0,   # in [0, 1); 0 = off. Uniform mean of theta over the last fraction
      )),
      # lm-eval harness tasks on the live parameters (evaluate/in_training.py): `tasks` is
      # comma-separated ("" = off); run at the end and every `every` steps (0 = only at the
      # end), `limit` documents per task (0 = all); `include_path`: a directory of task YAMLs.
      downstream=ml_collections.ConfigDict(dict(
          tasks="",
          every=0,
          limit=0,
          include_path="",
      )),
  ))

  # Where the run's records go besides metrics.jsonl and TensorBoard (train/wandb_sink.py).
  c.logging = ml_collections.ConfigDict(dict(
      wandb=ml_collections.ConfigDict(dict(
          project="",          # "" = off
          entity="",           # "" = the user's default entity
          mode="disabled",     # disabled | offline | online; logs only when not disabled
      )),
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                 # -1 = fill with the remaining devices
      fsdp=1,
      tensor=1,
      expert=1,
      # Optimizer state of another shape than its parameter (SOAP/Kron factors):
      # "matched" | "full" (least memory) | "replicated" (least traffic); train/state.py.
      factor_sharding="matched",
  ))
  return c


# Free-form sub-configs: their keys are checked by their consumer (the optimizer
# registry names unknown hyperparameters).
FREE_FORM = ("optimizer.hparams",)

DATA_SOURCES = ("synthetic", "shards")
WANDB_MODES = ("disabled", "offline", "online")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def as_dict(config: Any) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return dict(config)


def check_known_keys(config: Any, schema: Mapping | None = None) -> None:
  """Every key of ``config`` must exist in the schema (except free-form parts)."""
  schema = as_dict(base_config()) if schema is None else schema

  def walk(node: Mapping, reference: Mapping, prefix: str):
    for key, value in node.items():
      path = f"{prefix}{key}"
      if path in FREE_FORM:
        continue
      if key not in reference:
        close = difflib.get_close_matches(key, list(reference), n=1, cutoff=0.6)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key {path!r}{hint}; the schema is optbench_jax/config.py (base_config)")
      if isinstance(reference[key], Mapping) != isinstance(value, Mapping):
        raise ConfigError(f"config key {path!r} must be "
                          f"{'a section' if isinstance(reference[key], Mapping) else 'a value'}")
      if isinstance(value, Mapping):
        walk(value, reference[key], path + ".")

  walk(as_dict(config), schema, "")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
  _require(value in choices, f"config.{key} must be one of {list(choices)}, got {value!r}")


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
  _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"config.{key} must be an integer >= {minimum}, got {value!r}")


def check_values(config: ml_collections.ConfigDict) -> None:
  """Value checks that need no devices: choices, positive sizes; the model via ModelSpec."""
  m, d, o, t = config.model, config.data, config.optimizer, config.train
  try:     # the model's settings have one owner: ModelSpec
    models.ModelSpec.from_config(m)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None

  _choice("data.source", d.source, DATA_SOURCES)
  _positive_int("data.seq_len", d.seq_len)
  _positive_int("data.global_batch_size", d.global_batch_size)
  _positive_int("data.grad_accum_steps", d.grad_accum_steps)
  _require(d.global_batch_size % d.grad_accum_steps == 0,
           f"config.data.global_batch_size ({d.global_batch_size}) must be divisible by "
           f"data.grad_accum_steps ({d.grad_accum_steps})")
  if d.source == "synthetic":
    _require(d.synthetic_vocab_size <= m.vocab_size,
             f"config.data.synthetic_vocab_size ({d.synthetic_vocab_size}) exceeds "
             f"model.vocab_size ({m.vocab_size})")

  _require(o.grad_clip >= 0, f"config.optimizer.grad_clip must be >= 0, got {o.grad_clip!r}")
  _require(o.weight_decay >= 0,
           f"config.optimizer.weight_decay must be >= 0, got {o.weight_decay!r}")
  _require(o.weight_decay_scaling in ("decoupled", "independent"),
           f"config.optimizer.weight_decay_scaling must be 'decoupled' or 'independent', "
           f"got {o.weight_decay_scaling!r}")
  _require(isinstance(o.lr_scaling, str),
           f"config.optimizer.lr_scaling must be a rule name ('auto', 'none', 'mup', "
           f"'spectral', 'rms_match'), got {o.lr_scaling!r}")
  _require(isinstance(o.qk_clip_tau, (int, float)) and not isinstance(o.qk_clip_tau, bool)
           and o.qk_clip_tau >= 0,
           f"config.optimizer.qk_clip_tau must be a number >= 0 (0 = off; Kimi K2 used 100), "
           f"got {o.qk_clip_tau!r}")

  _positive_int("train.steps", t.steps)
  _positive_int("train.log_every", t.log_every)
  _positive_int("train.eval_every", t.eval_every, 0)
  _positive_int("train.eval_batches", t.eval_batches)
  _positive_int("train.checkpoint_every", t.checkpoint_every, 0)
  _positive_int("train.keep_checkpoints", t.keep_checkpoints)
  _positive_int("train.dynamics_every", t.dynamics_every, 0)
  _check_storage_timeout(t.storage_timeout_s)
  keep_steps = list(t.keep_steps)
  _require(all(isinstance(k, int) and not isinstance(k, bool) and 0 < k < t.steps
               for k in keep_steps),
           f"config.train.keep_steps must hold integers in (0, train.steps={t.steps}), "
           f"got {keep_steps!r}")
  if t.branch_from:
    _require(isinstance(t.branch_step, int) and 0 < t.branch_step < t.steps,
             f"config.train.branch_step must be an integer in (0, train.steps={t.steps}) when "
             f"train.branch_from is set, got {t.branch_step!r}")
  _check_weight_averaging(t)
  _check_downstream(t.downstream)
  _choice("mesh.factor_sharding", config.mesh.factor_sharding, FACTOR_SHARDINGS)
  w = config.logging.wandb
  _choice("logging.wandb.mode", w.mode, WANDB_MODES)
  for key in ("project", "entity"):
    _require(isinstance(w[key], str), f"config.logging.wandb.{key} must be a string, "
             f"got {w[key]!r}")


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_storage_timeout(seconds: Any) -> None:
  """Positive, and short enough that a trainer which cannot renew its gs:// lock gives up
  before another process may take the lock over (workdir_lock.max_renew_timeout_s)."""
  limit = workdir_lock.max_renew_timeout_s()
  _require(_number(seconds) and 0 < seconds <= limit,
           f"config.train.storage_timeout_s must be a number of seconds in (0, {limit:g}], got "
           f"{seconds!r}: a gs:// trainer gives up its lock {workdir_lock.HEARTBEAT_S:g} s + "
           f"this after its last renewal, which must stay {workdir_lock.STALE_MARGIN_S:g} s "
           f"before another process may take the lock over ({workdir_lock.STALE_AFTER_S:g} s)")


def _check_downstream(e: ml_collections.ConfigDict) -> None:
  _require(isinstance(e.tasks, str), f"config.train.downstream.tasks must be a string of "
           f"comma-separated lm-eval task names, got {e.tasks!r}")
  _positive_int("train.downstream.every", e.every, 0)
  _positive_int("train.downstream.limit", e.limit, 0)
  _require(isinstance(e.include_path, str),
           f"config.train.downstream.include_path must be a string, got {e.include_path!r}")


def downstream_tasks(config: ml_collections.ConfigDict) -> list[str]:
  """The task names of ``train.downstream.tasks`` (empty: no downstream evaluation)."""
  return [name.strip() for name in config.train.downstream.tasks.split(",") if name.strip()]


def _check_weight_averaging(t: ml_collections.ConfigDict) -> None:
  w = t.weight_averaging
  _require(_number(w.ema_decay) and 0 <= w.ema_decay < 1,
           f"config.train.weight_averaging.ema_decay must be a number in [0, 1) (0 = off), "
           f"got {w.ema_decay!r}")
  _require(isinstance(w.ema_start, int) and not isinstance(w.ema_start, bool)
           and 0 <= w.ema_start < t.steps,
           f"config.train.weight_averaging.ema_start must be an integer in [0, train.steps="
           f"{t.steps}), got {w.ema_start!r}")
  _require(_number(w.tail_fraction) and 0 <= w.tail_fraction < 1,
           f"config.train.weight_averaging.tail_fraction must be a number in [0, 1) (0 = off), "
           f"got {w.tail_fraction!r}")


def check_batch_split(config: ml_collections.ConfigDict, batch_axes: Mapping[str, int],
                      process_count: int) -> None:
  """The micro-batch must split evenly over hosts and the batch mesh axes ``{axis: size}``."""
  d = config.data
  micro = d.global_batch_size // d.grad_accum_steps
  batch_shards = math.prod(batch_axes.values())
  _require(d.global_batch_size % process_count == 0,
           f"config.data.global_batch_size ({d.global_batch_size}) must be divisible by the "
           f"number of hosts ({process_count})")
  _require(micro % batch_shards == 0,
           f"the micro-batch (data.global_batch_size {d.global_batch_size} / "
           f"data.grad_accum_steps {d.grad_accum_steps} = {micro}) must be divisible by the "
           f"{batch_shards} devices the batch is sharded over (mesh "
           f"{' x '.join(f'{a}={n}' for a, n in batch_axes.items())})")


def overlay(config: Any) -> ml_collections.ConfigDict:
  """A fresh ConfigDict: the schema's defaults overlaid with ``config`` (possibly partial).

  Unknown keys are rejected first; a free-form section (``optimizer.hparams``)
  is replaced whole, never merged with the defaults'.
  """
  check_known_keys(config)
  merged = as_dict(base_config())

  def merge(target: dict, source: Mapping, prefix: str):
    for key, value in source.items():
      if isinstance(value, Mapping) and f"{prefix}{key}" not in FREE_FORM:
        merge(target[key], value, f"{prefix}{key}.")
      else:
        target[key] = dict(value) if isinstance(value, Mapping) else value

  merge(merged, as_dict(config), "")
  return ml_collections.ConfigDict(merged)


def override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets the dotted ``key`` of ``config`` to ``value``; the key must exist in the schema
  (any key under the free-form ``optimizer.hparams``)."""
  node, parts = config, key.split(".")
  for depth, part in enumerate(parts[:-1]):
    if part not in node:
      missing = ".".join(parts[:depth + 1])
      raise ConfigError(f"{key!r} is not a trainer config key (no {missing!r})")
    node = node[part]
  if parts[-1] not in node and ".".join(parts[:-1]) not in FREE_FORM:
    raise ConfigError(f"{key!r} is not a trainer config key (see optbench_jax/config.py)")
  with node.ignore_type():
    node[parts[-1]] = value


def load_json(path: str) -> ml_collections.ConfigDict:
  """A config saved as JSON (a sweep's trial config), overlaid on the defaults."""
  with open(path) as f:
    return overlay(json.load(f))


def resolve(config: Any) -> ml_collections.ConfigDict:
  """The run's config: the defaults overlaid with ``config``, every key and value checked.

  Called once per run, by ``train.build``; raises one :class:`ConfigError`
  naming the culprit. Checks that need the devices (the batch split) come
  later, with the mesh.
  """
  resolved = overlay(config)
  check_values(resolved)
  return resolved
