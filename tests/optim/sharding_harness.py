"""Reusable sharding checks for optimizers on the 8 virtual CPU devices.

Typical use in an optimizer test::

    mesh = sharding_harness.make_mesh()                  # ('fsdp', 'tensor') = (4, 2)
    specs = {'w': P(None, 'fsdp', 'tensor'), 'b': P()}   # one PartitionSpec per param leaf
    result = sharding_harness.check_sharded_matches_unsharded(tx, params, specs, mesh)

``check_sharded_matches_unsharded`` places ``params`` (and random gradients)
with ``NamedSharding(mesh, spec)``, initialises the state under ``jit`` with
every state leaf that mirrors a parameter (same key path suffix and shape)
sharded like that parameter and the rest replicated, then runs ``n_steps``
jitted updates inside ``jax.set_mesh(mesh)`` with input shardings given and
output shardings left to the compiler. It asserts that

* the final parameters equal the unsharded single-device run to float32
  rounding (``rtol``/``atol``),
* every state leaf that mirrors a parameter comes back out of the compiled
  update still sharded like that parameter (the optimizer neither gathers nor
  replicates its state), and so do the updated parameters.

With ``pin_other_state=True`` the state leaves that mirror no parameter
(NorMuon's per-neuron second moment, Conda's bases) are given as output
shardings, as a trainer with donated state gives all of its state; otherwise
the compiler may hand them back in another layout than the next call expects.
The mirrored leaves stay unpinned, so the check above still means something.

It returns a ``ShardedRun`` with the compiled update (``compiled.as_text()``
for HLO inspection; ``collectives(text)`` lists its communication ops).
Meshes use Auto axis types (GSPMD propagation), as the trainer does.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from tests.optim import harness


def make_mesh(shape: tuple[int, ...] = (4, 2),
              axis_names: tuple[str, ...] = ("fsdp", "tensor")) -> jax.sharding.Mesh:
  """A mesh over the first prod(shape) devices with Auto (GSPMD) axes."""
  n = int(np.prod(shape))
  if len(jax.devices()) < n:
    raise RuntimeError(f"need {n} devices, have {len(jax.devices())} "
                       "(tests/conftest.py sets --xla_force_host_platform_device_count=8)")
  return jax.make_mesh(shape, axis_names, axis_types=(AxisType.Auto,) * len(shape))


def param_shardings(mesh, specs: Any) -> Any:
  """NamedShardings from a pytree of PartitionSpecs (PartitionSpec is a leaf)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def _suffix_match(state_path, param_paths):
  keys = tuple(jax.tree_util.keystr((k,)) for k in state_path)
  for param_path, value in param_paths:
    tail = tuple(jax.tree_util.keystr((k,)) for k in param_path)
    if len(tail) <= len(keys) and keys[len(keys) - len(tail):] == tail:
      return value
  return None


def state_shardings(tx: optax.GradientTransformation, params: Any, shardings: Any, mesh):
  """Shardings for ``tx.init(params)``: like the parameter a leaf mirrors, else replicated.

  A state leaf mirrors a parameter when its key path ends with the parameter's
  key path and it has the same shape (optax moments, momentum buffers).
  Returns (state shardings, state tree of bools "mirrors a parameter").
  """
  param_items = [(path, (leaf.shape, sharding)) for (path, leaf), sharding in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings))]
  shapes = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    match = _suffix_match(path, param_items)
    if match is not None and match[0] == leaf.shape:
      return match[1], True
    return replicated, False
  picked = jax.tree_util.tree_map_with_path(pick, shapes)
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], bool)
  return (jax.tree.map(lambda x: x[0], picked, is_leaf=is_pair),
          jax.tree.map(lambda x: x[1], picked, is_leaf=is_pair))


class ShardedRun(NamedTuple):
  params: Any         # final sharded parameters
  state: Any          # final sharded optimizer state
  expected: Any       # final unsharded parameters
  compiled: Any       # the compiled sharded update step


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
                                    pin_other_state: bool = False,
                                    **extra_args) -> ShardedRun:
  """Sharded == unsharded after ``n_steps``; state stays sharded like params (see module doc)."""
  mesh = make_mesh() if mesh is None else mesh
  grads = harness.make_grads(params, n_steps, seed=7)
  expected = harness.run_trajectory(tx, params, grads, **extra_args)[-1]

  shardings = param_shardings(mesh, specs)
  st_shardings, mirrors = state_shardings(tx, params, shardings, mesh)

  def step(p, s, g):
    updates, s = tx.update(g, s, p, **extra_args)
    return optax.apply_updates(p, updates), s

  with jax.set_mesh(mesh):
    p = jax.device_put(params, shardings)
    state = jax.jit(tx.init, out_shardings=st_shardings)(p)
    pinned = {}
    if pin_other_state:  # None leaves: layout left to the compiler
      out_state = jax.tree.map(lambda sh, mirrored: None if mirrored else sh,
                               st_shardings, mirrors)
      pinned["out_shardings"] = (jax.tree.map(lambda _: None, shardings), out_state)
    update = jax.jit(step, in_shardings=(shardings, st_shardings, shardings), **pinned)
    compiled = update.lower(p, state, p).compile()
    for g in grads:
      p, state = update(p, state, jax.device_put(g, shardings))

  harness.assert_trajectory_close([p], [expected], rtol=rtol, atol=atol)
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
  return ShardedRun(p, state, expected, compiled)
