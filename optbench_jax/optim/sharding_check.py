"""Sharded == unsharded checks for optimizers, on a mesh of (virtual CPU) devices.

Typical use (the optimizer tests, and the contract's ``sharded_equals_unsharded``)::

    mesh = sharding_check.make_mesh()                    # ('fsdp', 'tensor') = (4, 2)
    specs = {'w': P(None, 'fsdp', 'tensor'), 'b': P()}   # one PartitionSpec per param leaf
    result = sharding_check.check_sharded_matches_unsharded(tx, params, specs, mesh)

``check_sharded_matches_unsharded`` places ``params`` (and random gradients)
with ``NamedSharding(mesh, spec)``, initialises the state under ``jit`` with
every state leaf that mirrors a parameter (the trainer's rule, ``state_sharding``:
the parameter whose key path ends the leaf's, and the same shape) sharded like
that parameter and the rest replicated, then runs ``n_steps``
jitted updates inside ``jax.set_mesh(mesh)`` with input shardings given and
output shardings left to the compiler. It asserts that

* the final parameters equal the unsharded single-device run to float32
  rounding (``rtol``/``atol``),
* every state leaf that mirrors a parameter comes back out of the compiled
  update still sharded like that parameter (the optimizer neither gathers nor
  replicates its state), and so do the updated parameters.

``pin_state`` says which output shardings the update is given: ``"none"``
(the compiler chooses; the default), ``"other"`` (the state leaves that mirror
no parameter, such as NorMuon's per-neuron second moment and Conda's bases,
which the compiler may otherwise hand back in another layout than the next call
expects; the mirrored leaves stay unpinned, so the check above still means
something), or ``"all"`` (every state leaf and parameter, as the trainer's
donated step does: then only the values are checked). ``state_specs`` places
chosen state leaves (e.g. Kronecker factors) by hand.

It returns a ``ShardedRun`` with the compiled update (``compiled.as_text()``
for HLO inspection; ``collectives(text)`` lists its communication ops).
Meshes use Auto axis types (GSPMD propagation), as the trainer does.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from optbench_jax.optim import state_sharding
from optbench_jax.optim import testing


def make_mesh(shape: tuple[int, ...] = (4, 2),
              axis_names: tuple[str, ...] = ("fsdp", "tensor")) -> jax.sharding.Mesh:
  """A mesh over the first prod(shape) devices with Auto (GSPMD) axes."""
  n = int(np.prod(shape))
  if len(jax.devices()) < n:
    raise RuntimeError(f"need {n} devices, have {len(jax.devices())} (on CPU, run with "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={n})")
  return jax.make_mesh(shape, axis_names, axis_types=(AxisType.Auto,) * len(shape))


def param_shardings(mesh, specs: Any) -> Any:
  """NamedShardings from a pytree of PartitionSpecs (PartitionSpec is a leaf)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def state_shardings(tx: optax.GradientTransformation, params: Any, shardings: Any, mesh,
                    factor_sharding: str = "replicated",
                    state_specs: Callable[[Any, Any], P | None] | None = None):
  """Shardings for ``tx.init(params)`` by the trainer's rule (``state_sharding``); leaves of
  another shape than their parameter by ``factor_sharding`` (default: replicated).
  ``state_specs(path, leaf)``: a spec that overrides the rule for a leaf, or None.

  Returns (state shardings, state tree of bools "mirrors a parameter": the leaf has its
  parameter's shape, as optax moments and momentum buffers do).
  """
  shapes = jax.eval_shape(tx.init, params)
  derived = state_sharding.derive_opt_state_shardings(shapes, params, shardings, mesh,
                                                 factor_sharding)
  if state_specs is not None:
    def override(path, sharding, leaf):
      spec = state_specs(path, leaf)
      return sharding if spec is None else NamedSharding(mesh, spec)
    derived = jax.tree_util.tree_map_with_path(override, derived, shapes)
  return derived, state_sharding.mirrored_leaves(shapes, params)


class ShardedRun(NamedTuple):
  params: Any         # final sharded parameters
  state: Any          # final sharded optimizer state
  expected: Any       # final unsharded parameters
  compiled: Any       # the compiled sharded update step
  state_shardings: Any  # the state's shardings the run was given


def collectives(hlo_text: str) -> list[tuple[str, str]]:
  """(op, result shape) of every all-gather / all-to-all / reduce-scatter /
  all-reduce / collective-permute in a compiled HLO text."""
  found = []
  pattern = (r"= (.*?) (all-gather|all-to-all|reduce-scatter|all-reduce|"
             r"collective-permute)(-start)?\(")
  for line in hlo_text.splitlines():
    m = re.search(pattern, line)
    if m:
      found.append((m.group(2), m.group(1)))
  return found


def _same_sharding(actual, expected, ndim: int) -> bool:
  return actual.is_equivalent_to(expected, ndim)


def check_sharded_matches_unsharded(tx: optax.GradientTransformation, params: Any,
                                    specs: Any, mesh=None, n_steps: int = 3,
                                    rtol: float = 1e-5, atol: float = 1e-6,
                                    check_param_sharding: bool = True,
                                    pin_state: str = "none",
                                    factor_sharding: str = "replicated",
                                    state_specs: Callable[[Any, Any], P | None] | None = None,
                                    **extra_args) -> ShardedRun:
  """Sharded == unsharded after ``n_steps``; state stays sharded like params (see module doc)."""
  if pin_state not in ("none", "other", "all"):
    raise ValueError(f"pin_state must be 'none', 'other' or 'all', got {pin_state!r}")
  mesh = make_mesh() if mesh is None else mesh
  grads = testing.make_grads(params, n_steps, seed=7)
  expected = testing.run_trajectory(tx, params, grads, **extra_args)[-1]

  shardings = param_shardings(mesh, specs)
  st_shardings, mirrors = state_shardings(tx, params, shardings, mesh, factor_sharding,
                                         state_specs)

  def step(p, s, g):
    updates, s = tx.update(g, s, p, **extra_args)
    return optax.apply_updates(p, updates), s

  with jax.set_mesh(mesh):
    p = jax.device_put(params, shardings)
    state = jax.jit(tx.init, out_shardings=st_shardings)(p)
    pinned = {}
    if pin_state == "all":
      pinned["out_shardings"] = (shardings, st_shardings)
    elif pin_state == "other":  # None leaves: layout left to the compiler
      out_state = jax.tree.map(lambda sh, mirrored: None if mirrored else sh,
                               st_shardings, mirrors)
      pinned["out_shardings"] = (jax.tree.map(lambda _: None, shardings), out_state)
    update = jax.jit(step, in_shardings=(shardings, st_shardings, shardings), **pinned)
    compiled = update.lower(p, state, p).compile()
    for g in grads:
      p, state = update(p, state, jax.device_put(g, shardings))

  testing.assert_trajectory_close([p], [expected], rtol=rtol, atol=atol)
  for (path, leaf), want, mirrored in zip(jax.tree_util.tree_leaves_with_path(state),
                                          jax.tree.leaves(st_shardings),
                                          jax.tree.leaves(mirrors)):
    if mirrored:
      assert _same_sharding(leaf.sharding, want, leaf.ndim), (
          f"state leaf {jax.tree_util.keystr(path)} came back as {leaf.sharding.spec}, "
          f"expected {want.spec}")
  if check_param_sharding:
    for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(p),
                                  jax.tree.leaves(shardings)):
      assert _same_sharding(leaf.sharding, want, leaf.ndim), (
          f"parameter {jax.tree_util.keystr(path)} came back as {leaf.sharding.spec}, "
          f"expected {want.spec}")
  return ShardedRun(p, state, expected, compiled, st_shardings)
