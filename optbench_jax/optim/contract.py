"""The optimizer contract: the property suite every optimizer here passes, for any factory.

A factory (see ``registry`` for the contract) is checked on small trees by
:func:`run_checks`; ``python -m optbench_jax.optim.check`` prints the table.
The checks, each a function ``(factory, hparams) -> str`` (a note; raising
``AssertionError`` or any error means failure):

* ``returns_transformation``: keyword ``learning_rate`` (scalar and schedule) and
  ``weight_decay`` are accepted and an ``optax.GradientTransformation`` comes back;
* ``jit_equals_eager``: a jitted trajectory equals the eager one (on square
  matrices, as every check that compares two programs: :func:`square_params`);
* ``state_stable``: state shapes and dtypes do not change across steps;
* ``bf16_params``: bfloat16 parameters stay bfloat16 and finite, floating
  state is float32;
* ``inject_hyperparams``: ``optax.inject_hyperparams`` gives the same trajectory,
  with the arguments that cannot be traced static (:func:`static_arguments`);
* ``learning_rates_follow_schedule``: every parameter learning rate
  (``learning_rate``, ``*_learning_rate``, ``learning_rate_*``) given as a
  warmup-cosine schedule moves every leaf at schedule(t) / peak x its rate under a
  constant schedule (fixed gradients at fixed parameters, weight decay 0); a
  factory that owns its warmup follows the run's warmup instead; a rate whose step
  is projected back onto a sphere (Hyperball) is proportional only to first order:
  the factory lists it in ``projected_learning_rates`` and it is checked at the
  small peak :data:`PROJECTED_PEAK`;
* ``sharded_equals_unsharded``: on a 4 x 2 (fsdp, tensor) mesh of 8 devices,
  with the optimizer state sharded by the trainer's rule, updates equal the
  single-device ones and keep each parameter's sharding;
* ``stacked_equals_unstacked``: a stacked (L, in, out) leaf (with
  ``batch_axes`` when the factory takes it) moves as its L layers would alone;
* ``decreases_nonconvex``: a small tanh-MLP regression loss falls below half;
* ``memory_and_speed`` (measured, never fails): optimizer-state bytes per
  parameter and step time against AdamW on a 124M-shaped tree (or a small one).

How the checks call a factory:

* **At its defaults.** Only the hyperparameters given are set; a factory
  without a default ``learning_rate`` gets 1e-3 (AdamW's scale). A factory
  with a default keeps it: Prodigy's 1.0 multiplies its estimated step, and
  Muon's 0.02 is a spectral-norm rate; neither means anything at 1e-3. The
  trainer-owned ``batch_axes`` is filled in as the trainer would for the tree
  of each check.
* **As the trainer's step does.** Every ``update`` gets the trainer's two
  extra arguments (``train/step.py``; optimizers that do not take them never
  see them): ``hessian_grads_fn`` (the gradient at labels sampled from the
  model; on a trajectory of given gradients, the step's own gradient stands in)
  and ``obj_fn`` (the batch loss; on a given trajectory, 0.5 ||params||^2).
* **Built-ins: with** :data:`CONTRACT_HPARAMS` (:func:`hparams_for`), the
  few learning rates that the tiny MLP of ``decreases_nonconvex`` needs
  because a default is tuned for another scale; the reason is given for each.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optbench_jax.optim import factory_contract
from optbench_jax.optim import schedules
from optbench_jax.optim import sharding_check
from optbench_jax.optim.testing import (BATCH_AXES, MLP_BATCH_SIZE, N_STEPS,
                                         assert_trajectory_close, make_grads, make_params,
                                         run_trajectory, to_numpy, trains_mlp)

# Hyperparameters the contract sets for a built-in optimizer (on top of its defaults),
# each because the rate it would run at (its default, else DEFAULT_LEARNING_RATE) is
# tuned for another problem than the MLP of decreases_nonconvex (loss < 0.5 x in 200
# full-batch steps); the other checks pass at either rate:
CONTRACT_HPARAMS: dict[str, dict[str, Any]] = {
    # RMS-0.2 updates (Moonlight's AdamW-matching rule) at the LLM rate 1e-3 / 6e-4:
    # on the full-batch MLP Adam's early steps have RMS ~1, not 0.2, so these move ~5x
    # less than AdamW at 1e-3 and the loss is at 0.85 x / 0.9 x after 200 steps.
    "d_muon": {"learning_rate": 1e-2},
    "adamuon": {"learning_rate": 1e-2},
    # No default rate. The preconditioner starts at the identity and its fit
    # (step 0.1) has not scaled the step to Adam's size within 200 steps: 0.65 x at 1e-3.
    "kron": {"learning_rate": 3e-3},
    # No default rate. Adam in the eigenbasis of low-rank factors: the MLP's full-batch
    # gradients sit on a few eigendirections, so per-coordinate normalisation there
    # gives a shorter step than AdamW's (0.8 x at 1e-3; 0.39 x with the rotation off).
    "soap": {"learning_rate": 1e-2},
}

# The learning rate of a factory that has no default (AdamW's scale).
DEFAULT_LEARNING_RATE = 1e-3

# The peak of a projected learning rate in learning_rates_follow_schedule: a step
# R Normalize(W - lr R U^) - W is lr x (its tangent part) + O(lr^2), so at 1e-5 the
# second-order term is ~1e-5 of the step, under the check's tolerance (2e-4).
PROJECTED_PEAK = 1e-5


def hparams_for(name: str) -> dict[str, Any]:
  """The hyperparameters the contract runs built-in optimizer ``name`` with ({} for others)."""
  return dict(CONTRACT_HPARAMS.get(name, {}))


@dataclasses.dataclass
class CheckResult:
  name: str
  passed: bool
  note: str


def _shapes_dtypes(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def _accepts(factory: Callable, name: str) -> bool:
  parameters = inspect.signature(factory).parameters
  return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _with_structure(factory: Callable, hparams: dict) -> dict:
  """``hparams`` plus ``batch_axes`` for the checks' trees when the factory takes it."""
  out = dict(hparams)
  if "batch_axes" in inspect.signature(factory).parameters and "batch_axes" not in out:
    out["batch_axes"] = BATCH_AXES
  return out


def _half_sum_of_squares(params: Any) -> jax.Array:
  return 0.5 * sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(params))


def as_the_trainer_calls(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose ``update`` gets the trainer's extra arguments, as the train step passes them.

  ``hessian_grads_fn`` returns the step's own gradient (a trajectory of given
  gradients has no model to sample labels from) and ``obj_fn`` is 0.5
  ||params||^2; arguments the caller passes win. Sophia-G, whose ``update``
  needs ``hessian_grads_fn``, is then checked like any other optimizer.
  """
  tx = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    extra_args.setdefault("hessian_grads_fn", lambda: updates)
    extra_args.setdefault("obj_fn", _half_sum_of_squares)
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def square_params(seed: int = 0) -> dict:
  """``make_params``' tree with square matrices (batch axes ``BATCH_AXES``).

  For the checks that compare two programs (jit / eager, injected / constant
  hyperparameters, sharded / single device): with a non-square matrix one
  gradient makes a rank-deficient Kronecker factor (an (8, 6) G gives an 8 x 8
  G G^T of rank 6), whose null-space eigenvectors are any basis of it, chosen
  by rounding; SOAP's per-coordinate Adam and SPlus's sign in that basis are
  not rotation-invariant, so the update itself is not determined by the
  gradients there and two programs legitimately differ at O(the update).
  Square matrices give full-rank factors with distinct eigenvalues: a unique basis.
  """
  rng = np.random.default_rng(seed)
  return {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)},
      "norm": {"scale": jnp.asarray(1.0 + 0.1 * rng.normal(size=(6,)), jnp.float32)},
      "layers": {"kernel": jnp.asarray(rng.normal(size=(3, 4, 4)), jnp.float32)},
  }


def static_arguments(factory: Callable, values: dict) -> tuple[str, ...]:
  """The arguments ``optax.inject_hyperparams`` must take as ``static_args``.

  optax injects every numeric argument, defaults included, as an array kept
  in the state (so that it may change during training), and calls every
  callable argument as a schedule. Traced, a number cannot fix a shape, a
  Python loop count or a Python branch. So only floating-point arguments are
  injected (learning rates, betas, eps, decays); static are integers -- sizes,
  counts, intervals, seeds: SOAP's ``max_precond_dim`` decides which
  dimensions have factors, i.e. the state's structure --, everything that is
  not a number (masks, ``batch_axes``, choices), and the floats the factory
  lists in a ``static_args`` attribute because they fix a shape (Dion's
  ``oversample``: the sketch's rows per rank). ``values``: the arguments
  given; the others are taken at their defaults.
  """
  parameters = inspect.signature(factory).parameters
  declared = set(getattr(factory, "static_args", ()))
  merged = {k: values.get(k, p.default) for k, p in parameters.items()
            if k in values or p.default is not inspect.Parameter.empty}
  return tuple(k for k, v in merged.items()
               if k in declared or isinstance(v, bool) or not isinstance(v, float))


# The checks -------------------------------------------------------------------------------------
def check_returns_transformation(factory, hparams, **_) -> str:
  for name in ("learning_rate", "weight_decay"):
    assert _accepts(factory, name), f"the factory takes no {name!r} keyword argument"
  for lr in (hparams.get("learning_rate", 1e-3),
             optax.cosine_onecycle_schedule(10, hparams.get("learning_rate", 1e-3))):
    tx = factory(**{**_with_structure(factory, hparams), "learning_rate": lr})
    assert isinstance(tx, optax.GradientTransformation), (
        f"returned {type(tx).__name__}, not an optax.GradientTransformation")
  return "scalar and schedule learning_rate accepted"


def assert_jit_equals_eager(tx, params, grads, rtol: float = 1e-5, **extra_args) -> None:
  assert_trajectory_close(run_trajectory(tx, params, grads, jit=True, **extra_args),
                          run_trajectory(tx, params, grads, jit=False, **extra_args),
                          rtol=rtol, atol=1e-6)


def assert_state_stable(tx, params, grads, **extra_args) -> int:
  """State shapes and dtypes stay fixed along ``grads``; returns the number of state leaves."""
  state = tx.init(params)
  before = _shapes_dtypes(state)
  update = jax.jit(tx.update)
  for g in grads:
    _, state = update(g, state, params, **extra_args)
  assert _shapes_dtypes(state) == before, "optimizer state changed shape or dtype"
  return len(jax.tree.leaves(state))


def assert_bf16_params(tx, params, grads, **extra_args) -> list[str]:
  """bfloat16 copies of ``params`` stay bfloat16 and finite; returns low-precision state dtypes."""
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  low = sorted({str(x.dtype) for x in jax.tree.leaves(tx.init(bf16))
                if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.float32
                and x.ndim > 0})
  for leaf in jax.tree.leaves(run_trajectory(tx, bf16, grads, **extra_args)[-1]):
    assert leaf.dtype == jnp.bfloat16, f"a bfloat16 parameter became {leaf.dtype}"
    assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32)))), "non-finite parameters"
  return low


def assert_inject_round_trip(build, hparams, params, grads, wrap=lambda tx: tx,
                             **extra_args) -> list[str]:
  """``optax.inject_hyperparams(build)`` follows the same trajectory; returns the injected names.

  Arguments that cannot be traced are static (see :func:`static_arguments`);
  ``wrap`` is applied to both transformations (the contract's trainer-style calls).
  """
  static = static_arguments(build, hparams)
  injected = optax.inject_hyperparams(build, static_args=static)(**hparams)
  assert_trajectory_close(run_trajectory(wrap(injected), params, grads, **extra_args),
                          run_trajectory(wrap(build(**hparams)), params, grads, **extra_args),
                          rtol=1e-5, atol=1e-6)
  return sorted(injected.init(params).hyperparams)


def check_jit_equals_eager(factory, hparams, **extra_args) -> str:
  """On square matrices: jit and eager are two programs (see :func:`square_params`)."""
  params = square_params()
  assert_jit_equals_eager(as_the_trainer_calls(factory(**_with_structure(factory, hparams))),
                          params, make_grads(params), **extra_args)
  return f"{N_STEPS} steps"


def check_state_stable(factory, hparams, **extra_args) -> str:
  params = make_params()
  leaves = assert_state_stable(as_the_trainer_calls(factory(**_with_structure(factory, hparams))),
                               params, make_grads(params), **extra_args)
  return f"{leaves} state leaves"


def check_bf16_params(factory, hparams, **extra_args) -> str:
  params = make_params()
  low = assert_bf16_params(as_the_trainer_calls(factory(**_with_structure(factory, hparams))),
                           params, make_grads(params), **extra_args)
  return "params stay bfloat16" + (f"; state holds {low} leaves (float32 recommended)"
                                   if low else "; state float32")


def check_inject_hyperparams(factory, hparams, **extra_args) -> str:
  """On square matrices: traced and constant hyperparameters are two programs whose
  rounding differs (see :func:`square_params`); integer and declared structural
  arguments are static (see :func:`static_arguments`)."""
  params = square_params()
  full = _with_structure(factory, hparams)
  names = assert_inject_round_trip(factory, full, params, make_grads(params),
                                   wrap=as_the_trainer_calls, **extra_args)
  parameters = inspect.signature(factory).parameters
  value = lambda k: full.get(k, parameters[k].default)  # pylint: disable=unnecessary-lambda-assignment
  numbers = [k for k in static_arguments(factory, full)
             if isinstance(value(k), (int, float)) and not isinstance(value(k), bool)]
  return f"injected: {names or 'none'}; static numbers: {numbers or 'none'}"


def _check_own_warmup(factory, hparams, names, **extra_args) -> str:
  """A factory that owns its warmup runs with constant peaks and the run's warmup length
  (``factory_contract``: the trainer never schedules its rates). Its warmup must be the
  run's: ``warmup_steps=W`` with a constant peak moves every leaf exactly as the
  ``constant`` schedule with a W-step warmup (the only schedule ``bind`` allows it)
  given as its learning rate."""
  warmup, steps = 3, 8
  parameters = inspect.signature(factory).parameters
  if parameters["warmup_steps"].default is inspect.Parameter.empty:
    raise AssertionError("warmup_steps has no default: the factory cannot run the run's "
                         "schedule itself, so its warmup cannot be compared with it")
  params, grads = make_params(), make_grads(make_params(), steps, seed=3)
  peak = float(hparams.get("learning_rate", DEFAULT_LEARNING_RATE))
  base = {**_with_structure(factory, hparams), "weight_decay": 0.0, "learning_rate": peak}
  own = run_trajectory(as_the_trainer_calls(factory(**base, warmup_steps=warmup)), params,
                       grads, **extra_args)
  scheduled = run_trajectory(
      as_the_trainer_calls(factory(**{**base, "learning_rate": schedules.constant(peak, warmup)})),
      params, grads, **extra_args)
  try:
    assert_trajectory_close(own, scheduled, rtol=1e-5, atol=1e-7)
  except AssertionError as e:
    raise AssertionError(f"warmup_steps={warmup} does not move as the run's {warmup}-step "
                         f"linear warmup: {str(e).strip().splitlines()[0]}") from None
  return (f"owns its warmup: warmup_steps={warmup} equals the run's linear warmup; "
          f"{', '.join(names)} constant peaks")


def check_learning_rates_follow_schedule(factory, hparams, **extra_args) -> str:
  names = factory_contract.learning_rate_arguments(factory)
  assert "learning_rate" in names, "no learning_rate argument"
  if factory_contract.owns_warmup(factory_contract.accepted_arguments(factory)):
    return _check_own_warmup(factory, hparams, names, **extra_args)
  steps, warmup, probes = 10, 3, (0, 1, 3, 9)
  projected = set(getattr(factory, "projected_learning_rates", ()))
  peaks = {n: PROJECTED_PEAK if n in projected else
           float(hparams.get(n, 1e-3 if n == "learning_rate" else 3.7e-4)) for n in names}
  schedules_ = {n: optax.warmup_cosine_decay_schedule(0.0, p, warmup, steps, p * 0.1)
                for n, p in peaks.items()}
  params, grads = make_params(), make_grads(make_params(), steps, seed=3)
  base = {**_with_structure(factory, hparams), "weight_decay": 0.0}

  def moved(rates):
    tx = as_the_trainer_calls(factory(**{**base, **rates}))
    update, state, out = jax.jit(tx.update), tx.init(params), {}
    for t, g in enumerate(grads):
      updates, state = update(g, state, params, **extra_args)
      if t in probes:
        out[t] = to_numpy(updates)
    return out

  unit, scheduled = moved(peaks), moved(schedules_)
  doubled = moved({**peaks, "learning_rate": 2.0 * peaks["learning_rate"]})
  if all(np.array_equal(a, b) for t in probes
         for a, b in zip(jax.tree.leaves(doubled[t]), jax.tree.leaves(unit[t]))):
    raise AssertionError("learning_rate has no effect: doubling it leaves every update "
                         "unchanged (the factory ignores it, so no schedule can reach it)")
  shape = lambda t: float(schedules_["learning_rate"](t)) / peaks["learning_rate"]  # pylint: disable=unnecessary-lambda-assignment
  for t in probes:
    for (path, s), u in zip(jax.tree_util.tree_leaves_with_path(scheduled[t]),
                            jax.tree.leaves(unit[t])):
      scale = max(float(np.max(np.abs(u))), 1e-30)
      if not np.allclose(s, shape(t) * u, rtol=2e-4, atol=max(2e-6 * scale, 2e-7)):
        raise AssertionError(
            f"leaf {jax.tree_util.keystr(path)} at step {t} moves at "
            f"{float(np.max(np.abs(s))) / scale:.3g} x its rate; the schedule says {shape(t):.3g}")
  return f"{', '.join(names)} at steps {list(probes)}"


def check_sharded_equals_unsharded(factory, hparams, **extra_args) -> str:
  """On square matrices (see :func:`square_params`): a partitioned program sums in
  another order than the single-device one."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)},
            "norm": {"scale": jnp.linspace(0.5, 1.5, 8)},
            "layers": {"kernel": jnp.asarray(rng.normal(size=(3, 8, 8)), jnp.float32)}}
  specs = {"dense": {"kernel": P("fsdp", "tensor")}, "norm": {"scale": P("fsdp")},
           "layers": {"kernel": P(None, "fsdp", "tensor")}}
  sharding_check.check_sharded_matches_unsharded(
      as_the_trainer_calls(factory(**_with_structure(factory, hparams))), params, specs,
      n_steps=4, rtol=2e-5, atol=2e-6, pin_state="all", factor_sharding="matched",
      **extra_args)
  return "fsdp=4 x tensor=2, state sharded by the trainer's rule"


def check_stacked_equals_unstacked(factory, hparams, **extra_args) -> str:
  """Wide (4, 6) layers: a per-matrix scale that depends on the fan-in and the fan-out
  (Muon's sqrt(fan_out / fan_in), D-Muon's, Dion's) differs between a layer's (4, 6)
  and a stack taken as one (12, 6) matrix; for a tall matrix Muon's would not."""
  rng = np.random.default_rng(11)
  layers = [jnp.asarray(rng.normal(size=(4, 6)), jnp.float32) for _ in range(3)]
  stacked = {"layers": {"kernel": jnp.stack(layers)}}
  separate = {f"layer{i}": {"kernel": x} for i, x in enumerate(layers)}
  full = dict(hparams)
  takes_batch_axes = "batch_axes" in inspect.signature(factory).parameters
  grads = [jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32) for _ in range(N_STEPS)]
  tx_stacked = factory(**({**full, "batch_axes": {"layers": {"kernel": 1}}}
                          if takes_batch_axes else full))
  tx_separate = factory(**({**full, "batch_axes": {k: {"kernel": 0} for k in separate}}
                           if takes_batch_axes else full))
  a = run_trajectory(as_the_trainer_calls(tx_stacked), stacked,
                     [{"layers": {"kernel": g}} for g in grads], **extra_args)
  b = run_trajectory(as_the_trainer_calls(tx_separate), separate,
                     [{f"layer{i}": {"kernel": g[i]} for i in range(3)} for g in grads],
                     **extra_args)
  unstacked = [{f"layer{i}": {"kernel": p["layers"]["kernel"][i]} for i in range(3)} for p in a]
  try:
    assert_trajectory_close(unstacked, b, rtol=1e-5, atol=1e-6)
  except AssertionError as e:
    hint = "" if takes_batch_axes else " (the factory takes no batch_axes: accept it)"
    raise AssertionError(f"a stacked leaf does not move as its layers{hint}: "
                         f"{str(e).strip().splitlines()[0]}") from None
  return "with batch_axes" if takes_batch_axes else "elementwise (no batch_axes)"


def check_decreases_nonconvex(factory, hparams, **extra_args) -> str:
  """``testing.trains_mlp``, whose step passes the trainer's extra arguments (with
  labels sampled from the model for ``hessian_grads_fn``); a factory taking the
  trainer-owned ``batch_size`` gets the MLP's (the squared errors its loss averages)."""
  parameters = inspect.signature(factory).parameters
  full = dict(hparams)
  if "batch_axes" in parameters:
    full.setdefault("batch_axes", 0)
  if "batch_size" in parameters:
    full.setdefault("batch_size", MLP_BATCH_SIZE)
  first, last = trains_mlp(factory(**full), **extra_args)
  return f"MLP loss {first:.3g} -> {last:.3g} in 200 steps"


def _tree_124m() -> tuple[Any, Any]:
  """Zeros shaped like the 124M Llama's parameters, and their batch axes.

  GPT-2 small's shapes as the trainer lays them out: a tied (50304, 768)
  embedding, 12 stacked layers of four (768, 768) attention projections, a
  SwiGLU MLP of width 2048 and two norm scales, and a final norm.
  """
  layers, d, ffn, vocab = 12, 768, 2048, 50304
  shapes = {
      "embed": {"embedding": (vocab, d)},
      "layers": {"attention": {name: {"kernel": (layers, d, d)} for name in ("q", "k", "v", "o")},
                 "mlp": {"gate": {"kernel": (layers, d, ffn)}, "up": {"kernel": (layers, d, ffn)},
                         "down": {"kernel": (layers, ffn, d)}},
                 "attention_norm": {"scale": (layers, d)}, "mlp_norm": {"scale": (layers, d)}},
      "final_norm": {"scale": (d,)},
  }
  is_shape = lambda x: isinstance(x, tuple)  # pylint: disable=unnecessary-lambda-assignment
  params = jax.tree.map(lambda s: jnp.zeros(s, jnp.float32), shapes, is_leaf=is_shape)
  batch_axes = {k: jax.tree.map(lambda _: int(k == "layers"), v, is_leaf=is_shape)
                for k, v in shapes.items()}
  return params, batch_axes


def _step_seconds(tx, params, repeats: int) -> tuple[float, float]:
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e-3, p.dtype), params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = jax.block_until_ready(step(params, state))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    params, state = jax.block_until_ready(step(params, state))
    times.append(time.perf_counter() - start)
  n = sum(x.size for x in jax.tree.leaves(params))
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  return float(np.median(times)), state_bytes / n


def check_memory_and_speed(factory, hparams, tree: str = "124m", repeats: int = 3,
                           **extra_args) -> str:
  del extra_args
  from optbench_jax.optim import adam  # pylint: disable=import-outside-toplevel
  if tree == "124m":
    params, batch_axes = _tree_124m()
  else:
    params, batch_axes = make_params(), BATCH_AXES
  full = dict(hparams)
  if "batch_axes" in inspect.signature(factory).parameters:
    full.setdefault("batch_axes", batch_axes)
  ours, bytes_per_param = _step_seconds(as_the_trainer_calls(factory(**full)), params, repeats)
  reference, _ = _step_seconds(adam.adamw(1e-3), params, repeats)
  return (f"{bytes_per_param:.2f} state bytes/param; step {ours * 1e3:.1f} ms = "
          f"{ours / reference:.2f} x AdamW's ({tree} tree)")


CHECKS: dict[str, Callable[..., str]] = {
    "returns_transformation": check_returns_transformation,
    "jit_equals_eager": check_jit_equals_eager,
    "state_stable": check_state_stable,
    "bf16_params": check_bf16_params,
    "inject_hyperparams": check_inject_hyperparams,
    "learning_rates_follow_schedule": check_learning_rates_follow_schedule,
    "sharded_equals_unsharded": check_sharded_equals_unsharded,
    "stacked_equals_unstacked": check_stacked_equals_unstacked,
    "decreases_nonconvex": check_decreases_nonconvex,
    "memory_and_speed": check_memory_and_speed,
}
FAST = tuple(name for name in CHECKS if name != "memory_and_speed")


def failure_summary(results: list[CheckResult]) -> str:
  """The failed checks, each distinct reason said once: ``"a, b: reason; c: other"``."""
  by_reason: dict[str, list[str]] = {}
  for r in results:
    if not r.passed:
      by_reason.setdefault(r.note, []).append(r.name)
  return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())


def run_checks(factory: Callable, hparams: dict | None = None, names=None,
               tree: str = "small",
               on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
  """Runs the named checks (default: all) on ``factory``; never raises for a failing check.

  ``learning_rate`` not given: the factory's default, else ``DEFAULT_LEARNING_RATE``.
  ``on_result`` is called with each result as soon as its check finishes. A failure's
  reason is kept whole (whitespace collapsed).
  """
  hparams = dict(hparams or {})
  default = inspect.signature(factory).parameters.get("learning_rate")
  has_default = default is not None and default.default is not inspect.Parameter.empty
  hparams.setdefault("learning_rate",
                     default.default if has_default else DEFAULT_LEARNING_RATE)
  results = []
  for name in (names or CHECKS):
    kwargs = {"tree": tree} if name == "memory_and_speed" else {}
    try:
      note = CHECKS[name](factory, hparams, **kwargs)
      results.append(CheckResult(name, True, note))
      if on_result is not None:
        on_result(results[-1])
      continue
    except Exception as e:  # pylint: disable=broad-except  (any failure is a result)
      message = str(e).strip() or type(e).__name__
      if not isinstance(e, AssertionError):
        message = f"{type(e).__name__}: {message}"
        frame = traceback.extract_tb(e.__traceback__)[-1]
        message += f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
      results.append(CheckResult(name, False, " ".join(message.split())))
      if on_result is not None:
        on_result(results[-1])
  return results
