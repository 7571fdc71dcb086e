"""SOAP and Kron step time over AdamW's, and optimizer-state bytes per parameter.

On the 124M-shaped parameter tree (float32, stacked (L, ...) leaves, the
contract's naming, tied embeddings): for each optimizer, the jitted ``update``
is timed in two states -- an ordinary step and a step that refreshes the
preconditioner (SOAP: power iteration + QR every ``precondition_frequency``
steps; Kron: the factor fit, which runs with probability p) -- and combined as

    SOAP: (f - 1) / f * t_plain + 1 / f * t_refresh
    Kron: (1 - p) * t_plain + p * t_refresh

SOAP's one-off ``eigh`` step (the first call) is not part of the amortised
figure. Timings are interleaved (round-robin over optimizers) and the median
is reported, so background load hits every row alike.

    PYTHONPATH=. python benchmarks/preconditioners.py [--layers 12] [--repeats 3]

``--layers`` shrinks the timed tree (memory: ~8 GB at 12 layers); state
bytes are always counted on the full ``--state_layers`` tree from shapes.

    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/preconditioners.py --hlo \
        [--hlo_layers 12] [--frequency 10] [--kron_probability 0.1] [--hlo_top 8] \
        [--hlo_names adamw,muon,dion]

``--hlo`` times nothing: it compiles, from shapes only (nothing allocated),
one sharded ``update`` + ``apply_updates`` step of AdamW (the baseline), SOAP,
Kron, Muon and Dion (rank fractions 1/2 and 1/8) as the trainer shards them -- 8 virtual CPU devices (the flag is
added to ``XLA_FLAGS``), Auto mesh ('fsdp', 'tensor') = (4, 2), parameters
by the model's rules (embed -> fsdp; mlp / heads / vocab -> tensor; layer
stack and norms replicated), optimizer state by
``optbench_jax.optim.state_sharding.derive_opt_state_shardings`` under each
``--factor_sharding`` policy (matched / full / replicated; default all
three) -- and prints per optimizer and policy:

* the collectives of the whole compiled program per kind: count, MiB per
  device (the sum of the result shapes, tuple results summed; an
  all-gather's result is the gathered array, an all-reduce's the reduced
  one), and the largest result;
* the same split by region: outside any conditional (every step), or inside
  branch i of a conditional (only when taken: SOAP's switch is 0 build the
  bases / 1 Adam / 2 Adam + refresh, Kron's per-leaf conds 0 skip / 1 fit the
  factors), the bytes of a step through each branch, and their average
  weighted by ``--frequency`` (SOAP) or ``--kron_probability`` (Kron);
* the ``--hlo_top`` largest collectives with their replica-group size (2 =
  tensor, 4 = fsdp, 8 = both) and the source line that produced them (XLA
  combines collectives, so a tuple's line is its first member's);
* optimizer-state MiB: whole, and per device under the policy;
* a closing summary: state MiB per device vs collective MiB per step, one row
  per optimizer and policy.

The XLA:CPU pipeline forms no reduce-scatter: a partial sum that ends
sharded shows up as an all-reduce of the whole result (then sliced).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time
from typing import NamedTuple

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if "--hlo" in sys.argv and _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  # must precede the first jax import
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG).strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import optbench_jax.optim as O
from optbench_jax.optim.kron import scale_by_kron
from optbench_jax.optim.soap import scale_by_soap
from optbench_jax.optim import state_sharding
from optbench_jax.train import state as state_lib


def llama_tree(layers: int, d: int = 768, ffn: int = 2048, vocab: int = 50304):
  z = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment
  return {"embed": {"embedding": z(vocab, d)},
          "layers": {"attn_norm": {"scale": z(layers, d)},
                     "attn": {n: {"kernel": z(layers, d, d)}
                              for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
                     "mlp_norm": {"scale": z(layers, d)},
                     "mlp": {"gate_proj": {"kernel": z(layers, d, ffn)},
                             "up_proj": {"kernel": z(layers, d, ffn)},
                             "down_proj": {"kernel": z(layers, ffn, d)}}},
          "final_norm": {"scale": z(d)}}


def batch_axes(tree):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 1 if "layers" in jax.tree_util.keystr(path) else 0, tree)


def materialise(tree, seed):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(tree)))
  leaves = [0.02 * jax.random.normal(k, s.shape, s.dtype)
            for k, s in zip(keys, jax.tree.leaves(tree))]
  return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def state_bytes(state) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


# --- --hlo: what the sharded update communicates ------------------------------

_COLLECTIVE_KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                     "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
# `%x = <result type> all-gather(` or, for async pairs, the `-done` op, whose
# result is the output alone (a `-start` result also holds the operands).
_COLLECTIVE_RE = re.compile(r"= (.*?) (" + "|".join(_COLLECTIVE_KINDS) + r")(-done)?\(")
_ARRAY_RE = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
_HEADER_RE = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{$")


class Collective(collections.namedtuple(
    "Collective", "kind bytes shape group region source op_name")):
  """One communication op of a compiled HLO module.

  ``bytes``: result bytes per device (tuple results summed); ``shape``: the
  result type without layouts; ``group``: devices per replica group (None
  when not stated); ``region``: ``outside`` or ``branch i`` (inside branch i
  of a conditional, nested ones counted under the outermost);
  ``source`` / ``op_name``: from the op's metadata.
  """


def _array_bytes(result_type: str) -> int:
  return sum(int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
             * _DTYPE_BYTES.get(dtype, 4)
             for dtype, dims in _ARRAY_RE.findall(result_type))


def _short_shape(result_type: str) -> str:
  """The result type without layouts; a tuple as ``n arrays, max <largest>``."""
  arrays = _ARRAY_RE.findall(result_type)
  if len(arrays) == 1:
    return f"{arrays[0][0]}[{arrays[0][1]}]"
  dtype, dims = max(arrays, key=lambda a: _array_bytes(f"{a[0]}[{a[1]}]"))
  return f"{len(arrays)} arrays, max {dtype}[{dims}]"


def _group_size(line: str) -> int | None:
  """Devices per replica group, from any of the three HLO spellings."""
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", line)
  if mesh:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
    return int(np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh.group(2))]))
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
  if iota:
    return int(iota.group(2))
  listed = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if listed:
    return len(listed.group(1).split(","))
  return None


def _stack_frames(hlo_text: str) -> dict[str, str]:
  """stack_frame_id -> ``file:line`` of that (innermost) frame, from the module's tables."""
  tables, section = collections.defaultdict(dict), None
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    entry = re.match(r"^(\d+) (.*)$", line)
    if section and entry:
      tables[section][entry.group(1)] = entry.group(2)
    elif section and line.strip():
      section = None
  frames = {}
  for frame, body in tables["StackFrames"].items():
    location = tables["FileLocations"].get(re.search(r"file_location_id=(\d+)", body).group(1), "")
    file_id = re.search(r"file_name_id=(\d+)", location)
    line_no = re.search(r"\bline=(\d+)", location)
    if file_id and line_no:
      name = tables["FileNames"].get(file_id.group(1), "?").strip('"')
      frames[frame] = f"{os.path.basename(name)}:{line_no.group(1)}"
  return frames


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
  """Instruction lines per computation name, and the entry computation's name."""
  comps, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER_RE.match(line)
    if header and not line.startswith(" "):
      current = header.group(2)
      comps[current] = []
      if header.group(1):
        entry = current
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      comps[current].append(line)
  return comps, entry


def _callees(line: str) -> list[tuple[str, int | None]]:
  """(computation, branch index or None) called by one instruction."""
  out = []
  branches = re.search(r"branch_computations=\{([^}]*)\}", line)
  if branches:
    names = [n.strip().lstrip("%") for n in branches.group(1).split(",")]
    out += [(n, i) for i, n in enumerate(names)]
  for attr, index in (("false_computation", 0), ("true_computation", 1)):
    m = re.search(attr + r"=%?([\w.\-]+)", line)
    if m:
      out.append((m.group(1), index))
  for attr in ("calls", "to_apply", "body", "condition"):
    for m in re.finditer(r"\b" + attr + r"=%?([\w.\-]+)", line):
      out.append((m.group(1), None))
  return out


def _regions(comps: dict[str, list[str]], entry: str) -> dict[str, str]:
  """Computation -> ``outside`` or ``branch i`` (its outermost conditional branch)."""
  region, todo = {entry: "outside"}, [entry]
  while todo:
    name = todo.pop()
    for line in comps.get(name, []):
      for callee, branch in _callees(line):
        if callee in region or callee not in comps:
          continue
        outer = region[name]
        region[callee] = f"branch {branch}" if branch is not None and outer == "outside" else outer
        todo.append(callee)
  return region


def _source(line: str, frames: dict[str, str]) -> str:
  """``file:line`` that produced an HLO instruction (innermost traced frame), or ``?``."""
  frame = re.search(r"stack_frame_id=(\d+)", line)
  if frame:
    return frames.get(frame.group(1), "?")
  file_ = re.search(r'source_file="([^"]*)"', line)     # older metadata spelling
  line_no = re.search(r"source_line=(\d+)", line)
  return f"{os.path.basename(file_.group(1))}:{line_no.group(1)}" if file_ and line_no else "?"


def parse_collectives(hlo_text: str) -> list[Collective]:
  """Every all-gather / all-reduce / reduce-scatter / all-to-all / collective-permute."""
  comps, entry = _computations(hlo_text)
  region = _regions(comps, entry)
  frames = _stack_frames(hlo_text)
  found = []
  for name, lines in comps.items():
    for line in lines:
      m = _COLLECTIVE_RE.search(line)
      if not m:
        continue
      op_name = re.search(r'op_name="([^"]*)"', line)
      found.append(Collective(
          kind=m.group(2), bytes=_array_bytes(m.group(1)), shape=_short_shape(m.group(1)),
          group=_group_size(line), region=region.get(name, "unreachable"),
          source=_source(line, frames), op_name=op_name.group(1) if op_name else "?"))
  return found


def hlo_mesh() -> jax.sharding.Mesh:
  """The 8-device ('fsdp', 'tensor') = (4, 2) Auto mesh of the sharding tests."""
  if len(jax.devices()) < 8:
    raise RuntimeError(f"--hlo needs 8 devices, have {jax.devices()} "
                       f"(run with JAX_PLATFORMS=cpu XLA_FLAGS={_DEVICE_FLAG})")
  return jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2,
                       devices=jax.devices()[:8])


def llama_specs(tree):
  """The model's parameter specs for ``llama_tree`` (embed -> fsdp; mlp/heads/vocab -> tensor)."""
  def spec(path, _):
    key = jax.tree_util.keystr(path)
    if "embedding" in key:                       # (vocab, embed)
      return P("tensor", "fsdp")
    if "kernel" in key and ("o_proj" in key or "down_proj" in key):
      return P(None, "tensor", "fsdp")           # (layers, heads | mlp, embed)
    if "kernel" in key:
      return P(None, "fsdp", "tensor")           # (layers, embed, heads | mlp)
    return P()                                   # norms
  return jax.tree_util.tree_map_with_path(spec, tree)


def _with_sharding(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def compile_sharded_step(tx, params, mesh, factor_sharding: str = "matched"):
  """Compiles one ``update`` + ``apply_updates`` on the sharded abstract tree.

  Returns (compiled, abstract state, state shardings, param shardings).
  """
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), llama_specs(params),
                          is_leaf=lambda x: isinstance(x, P))
  abstract_state = jax.eval_shape(tx.init, params)
  state_sh = state_sharding.derive_opt_state_shardings(abstract_state, params, param_sh, mesh,
                                                  factor_sharding)

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  p = _with_sharding(params, param_sh)
  s = _with_sharding(abstract_state, state_sh)
  with jax.set_mesh(mesh):
    fn = jax.jit(step, in_shardings=(param_sh, state_sh, param_sh),
                 out_shardings=(param_sh, state_sh))
    compiled = fn.lower(p, s, p).compile()
  return compiled, abstract_state, state_sh, param_sh


class HloCase(NamedTuple):
  """One optimizer of ``--hlo``: ``branches`` names its conditional branches
  (region -> meaning), ``weights`` the share of steps that take each."""
  name: str
  tx: optax.GradientTransformation
  branches: dict[str, str]
  weights: dict[str, float]


def hlo_cases(axes, frequency: int, kron_probability: float) -> list[HloCase]:
  """AdamW (the baseline), SOAP and Kron as the trainer builds them (``axes``: batch axes)."""
  f, p = frequency, kron_probability
  return [
      HloCase("adamw", O.adamw(1e-3), {}, {}),
      HloCase(f"soap (precondition_frequency={f})",
              O.soap(1e-3, precondition_frequency=f, batch_axes=axes),
              {"branch 0": "build bases (first call)", "branch 1": "adam",
               "branch 2": "adam + refresh"},
              {"branch 1": (f - 1) / f, "branch 2": 1 / f}),
      HloCase(f"kron (update probability {p})", O.kron(1e-3, batch_axes=axes),
              {"branch 0": "skip fit", "branch 1": "fit factors"},
              {"branch 0": 1 - p, "branch 1": p}),
      # The orthonormal-update pair: Muon redistributes whole matrices for
      # Newton-Schulz; Dion works on the shards and reduces rank-r factors.
      HloCase("muon", O.muon(1e-3, batch_axes=axes), {}, {}),
      *(HloCase(f"dion(rank_fraction={r})", O.dion(1e-3, rank_fraction=r, batch_axes=axes),
                {}, {}) for r in (0.5, 0.125)),
  ]


def _mib(n: float) -> str:
  return f"{n / 2**20:10.2f}"


def _bytes(ops) -> int:
  return sum(c.bytes for c in ops)


def print_kinds(found: list[Collective]) -> None:
  """Count, bytes per device and largest result per collective kind (whole program)."""
  print(f"  {'whole program':34s} {'count':>6s} {'MiB/device':>10s}  largest")
  for kind in _COLLECTIVE_KINDS:
    ops = [c for c in found if c.kind == kind]
    largest = max(ops, key=lambda c: c.bytes).shape if ops else "-"
    print(f"  {kind:34s} {len(ops):6d} {_mib(_bytes(ops))}  {largest}")
  print(f"  {'total':34s} {len(found):6d} {_mib(_bytes(found))}")


def print_regions(found: list[Collective], case: HloCase) -> float:
  """Collectives outside / inside each conditional branch, and per step taken.

  Returns the amortised bytes per device per step."""
  print(f"  {'by region':34s} {'count':>6s} {'MiB/device':>10s}  kinds")
  regions = ["outside"] + sorted(case.branches)
  for region in regions + sorted({c.region for c in found} - set(regions)):
    ops = [c for c in found if c.region == region]
    kinds = collections.Counter(c.kind for c in ops)
    label = f"{region}: {case.branches[region]}" if region in case.branches else region
    print(f"  {label:34s} {len(ops):6d} {_mib(_bytes(ops))}  "
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
  outside = _bytes(c for c in found if c.region == "outside")
  per_step = {region: outside + _bytes(c for c in found if c.region == region)
              for region in case.branches}
  amortised = outside + sum(w * (per_step[region] - outside)
                            for region, w in case.weights.items())
  print("  MiB/device per step (outside + the branch taken): "
        + "".join(f"{case.branches[r]} {b / 2**20:.1f}; " for r, b in per_step.items())
        + f"amortised {amortised / 2**20:.1f}")
  return amortised


def print_largest(found: list[Collective], top: int) -> None:
  print(f"  largest {top} (group: devices per replica group, 2 = tensor, 4 = fsdp, 8 = both):")
  for c in sorted(found, key=lambda c: -c.bytes)[:top]:
    op = c.op_name.split("/")[-1].strip("()")[:24]
    print(f"    {c.kind:18s} {c.shape:32s} {_mib(c.bytes)} MiB  group {c.group}  "
          f"{c.region:9s} {c.source:14s} {op}")


def print_state_bytes(abstract_state, state_sh) -> None:
  """Whole optimizer state vs one device's share of it under the policy's shardings."""
  whole = state_lib.total_bytes(abstract_state)
  derived = state_lib.per_device_bytes(abstract_state, state_sh)
  print(f"  optimizer state MiB: whole {whole / 2**20:.1f}; per device {derived / 2**20:.1f}")


def run_hlo(layers: int, frequency: int, kron_probability: float, top: int,
            policies: list[str], names: list[str] | None = None) -> None:
  """Compiles and reports the sharded AdamW / SOAP / Kron / Muon / Dion steps
  (see the module doc); ``names``: only the cases whose name starts with one."""
  mesh = hlo_mesh()
  params = llama_tree(layers)
  n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(params))
  print(f"--hlo: {n_params / 1e6:.1f}M parameters ({layers} layers), mesh "
        f"{dict(mesh.shape)}, one update + apply_updates step, float32")
  summary = []
  for case in hlo_cases(batch_axes(params), frequency, kron_probability):
    if names and not any(case.name.startswith(n) for n in names):
      continue
    for policy in policies:
      start = time.perf_counter()
      compiled, abstract_state, state_sh, _ = compile_sharded_step(case.tx, params, mesh, policy)
      found = parse_collectives(compiled.as_text())
      memory = compiled.memory_analysis()
      temp = getattr(memory, "temp_size_in_bytes", 0) if memory is not None else 0
      print(f"\n{case.name}, factor_sharding={policy}: compiled in "
            f"{time.perf_counter() - start:.1f} s, temp {temp / 2**20:.1f} MiB/device")
      print_kinds(found)
      amortised = print_regions(found, case) if case.branches else _bytes(found)
      print_largest(found, top)
      print_state_bytes(abstract_state, state_sh)
      summary.append((case.name.split()[0], policy,
                      state_lib.per_device_bytes(abstract_state, state_sh), amortised))
  print("\nsummary: optimizer-state MiB per device vs collective MiB per device per step "
        "(amortised)")
  print(f"  {'optimizer':10s} {'factor_sharding':16s} {'state MiB/device':>17s} "
        f"{'comm MiB/step':>14s}")
  for name, policy, state_bytes, comm in summary:
    print(f"  {name:10s} {policy:16s} {state_bytes / 2**20:17.1f} {comm / 2**20:14.1f}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--layers", type=int, default=12, help="layers of the timed tree")
  parser.add_argument("--state_layers", type=int, default=12,
                      help="layers of the tree whose state bytes are counted (shapes only)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--frequency", type=int, default=10)
  parser.add_argument("--kron_probability", type=float, default=0.1)
  parser.add_argument("--hlo", action="store_true",
                      help="print the collectives of the sharded steps instead of timing")
  parser.add_argument("--hlo_layers", type=int, default=12,
                      help="layers of the --hlo tree (compile time does not grow with it)")
  parser.add_argument("--hlo_top", type=int, default=8,
                      help="largest collectives listed per optimizer in --hlo")
  parser.add_argument("--factor_sharding", choices=["matched", "full", "replicated"],
                      action="append",
                      help="--hlo: state sharding policies to compare (default: all three)")
  parser.add_argument("--hlo_names", default="",
                      help="--hlo: comma-separated optimizers to compile (default: all of "
                           "adamw, soap, kron, muon, dion)")
  args = parser.parse_args()
  if args.hlo:
    run_hlo(args.hlo_layers, args.frequency, args.kron_probability, args.hlo_top,
            args.factor_sharding or ["matched", "full", "replicated"],
            [n for n in args.hlo_names.split(",") if n])
    return

  shapes = llama_tree(args.layers)
  axes = batch_axes(shapes)
  n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  params = materialise(shapes, 0)
  grads = materialise(shapes, 1)
  f = args.frequency

  # Each row: name -> (transformation, {variant: state}), variants "plain"/"refresh".
  adamw = O.adamw(1e-3)
  soap = scale_by_soap(b1=0.9, b2=0.999, precondition_frequency=f, batch_axes=axes)
  kron_plain = scale_by_kron(preconditioner_update_probability=1e-9, batch_axes=axes)
  kron_fit = scale_by_kron(preconditioner_update_probability=1.0, batch_axes=axes)

  # One state per optimizer, shared by its "plain" and "refresh" variants (the
  # state is donated and replaced by each call), to keep memory down.
  rows = {"adamw": [(jax.jit(adamw.update), "plain")],
          "soap": [(jax.jit(soap.update), "plain"),
                   (jax.jit(soap.update), "refresh")],
          "kron": [(jax.jit(kron_plain.update), "plain"),
                   (jax.jit(kron_fit.update), "refresh")]}
  current = {"adamw": adamw.init(params), "kron": kron_plain.init(params),
             "soap": soap.init(params)}  # identity bases: timing does not depend on values
  # State bytes per parameter at the full size, from shapes only.
  full = llama_tree(args.state_layers)
  full_axes = batch_axes(full)
  builders = {"adamw": adamw,
              "soap": scale_by_soap(precondition_frequency=f, batch_axes=full_axes),
              "kron": scale_by_kron(batch_axes=full_axes)}
  n_full = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(full))
  st_bytes = {n: state_bytes(jax.eval_shape(tx.init, full)) / n_full
              for n, tx in builders.items()}

  times = {name: {v: [] for _, v in entries} for name, entries in rows.items()}
  for rep in range(args.repeats + 1):  # first round compiles
    for name, entries in rows.items():
      for fn, variant in entries:
        s = current[name]
        if name == "soap":  # pin the count: an ordinary step or a refresh step
          s = s._replace(count=jnp.asarray(2 if variant == "plain" else f, jnp.int32))
        start = time.perf_counter()
        out = fn(grads, s, params)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - start
        current[name] = out[1]
        del out
        print(f"  round {rep} {name}/{variant}: {elapsed:.2f} s", flush=True)
        if rep > 0:
          times[name][variant].append(elapsed)

  med = {n: {v: statistics.median(t) for v, t in vs.items()} for n, vs in times.items()}
  base = med["adamw"]["plain"]
  amortised = {
      "adamw": base,
      "soap": (f - 1) / f * med["soap"]["plain"] + med["soap"]["refresh"] / f,
      "kron": ((1 - args.kron_probability) * med["kron"]["plain"]
               + args.kron_probability * med["kron"]["refresh"]),
  }
  print(f"parameters: {n_params / 1e6:.1f}M  layers={args.layers}  devices={jax.devices()}")
  print(f"{'optimizer':10s} {'plain s':>9s} {'refresh s':>10s} {'amortised s':>12s} "
        f"{'x AdamW':>8s} {'state B/param':>14s}")
  for name in ("adamw", "soap", "kron"):
    refresh = med[name].get("refresh", float("nan"))
    print(f"{name:10s} {med[name]['plain']:9.3f} {refresh:10.3f} {amortised[name]:12.3f} "
          f"{amortised[name] / base:8.2f} {st_bytes[name]:14.2f}")
  print(f"(SOAP precondition_frequency={f}; Kron update probability={args.kron_probability}; "
        f"state bytes/param for the {n_full / 1e6:.1f}M tree with {args.state_layers} layers)")


if __name__ == "__main__":
  main()
