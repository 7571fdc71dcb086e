"""Newton-Schulz and Muon throughput on the 124M model's hidden matrices.

Prints, for NS5 (classic, float32) on 768x768, 768x2048, 2048x768 and their
(12, ...) stacks, the achieved FLOP/s over a jitted float32 matmul peak
measured in the same run (2 m n k FLOPs per matmul; one NS step on the wide
orientation m <= n costs 4 m^2 n + 2 m^3), and the step time of
``optbench_jax.optim.muon`` over ``optax.contrib.muon`` on the 124M-shaped
tree (tied 50304x768 embedding, 12 stacked layers), timed interleaved, medians.

    python benchmarks/newton_schulz.py [--reps 5] [--muon-reps 3]
    python benchmarks/newton_schulz.py --hlo   # collectives of a sharded Muon step

``--hlo`` compiles one Muon step on a (8, 768, 2048) kernel sharded
P(None, 'fsdp', 'tensor') over 8 virtual CPU devices and prints its
communication ops (see BUILD_NOTES.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import statistics
import sys
import time

if "--hlo" in sys.argv:  # must precede the first jax import
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from optbench_jax.optim import linalg
from optbench_jax.optim.muon import muon


def _time(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def interleaved(fns: dict, args: dict, reps: int) -> dict:
  """Median seconds per call of each jitted fn, alternating between them."""
  for name, fn in fns.items():
    jax.block_until_ready(fn(*args[name]))  # compile + warm up
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      times[name].append(_time(fn, *args[name]))
  return {name: statistics.median(t) for name, t in times.items()}


def ns_flops(shape, steps=5) -> float:
  *batch, rows, cols = shape
  m, n = min(rows, cols), max(rows, cols)
  return float(np.prod(batch or [1])) * steps * (4 * m * m * n + 2 * m ** 3)


def tree_124m(key=0):
  rng = np.random.default_rng(key)
  f = lambda *s: jnp.asarray(rng.normal(size=s) * 0.02, jnp.float32)
  L, d, ff, V = 12, 768, 2048, 50304
  return {
      "embed": {"embedding": f(V, d)},
      "layers": {
          "attn_norm": {"scale": f(L, d)}, "mlp_norm": {"scale": f(L, d)},
          "attn": {k: {"kernel": f(L, d, d)} for k in ("q_proj", "k_proj", "v_proj", "o_proj")},
          "mlp": {"gate_proj": {"kernel": f(L, d, ff)}, "up_proj": {"kernel": f(L, d, ff)},
                  "down_proj": {"kernel": f(L, ff, d)}}},
      "final_norm": {"scale": f(d)},
  }


def batch_axes_124m(params):
  return jax.tree_util.tree_map_with_path(
      lambda p, _: 1 if jax.tree_util.keystr(p).startswith("['layers']") else 0, params)


def optax_dimension_numbers(params):
  dn = optax.contrib.MuonDimensionNumbers
  def pick(path, x):
    key = jax.tree_util.keystr(path)
    if "kernel" in key:
      return dn(reduction_axis=1, output_axis=2)
    return None
  return jax.tree_util.tree_map_with_path(pick, params)


def print_sharded_collectives():
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from optbench_jax.optim import sharding_check  # pylint: disable=import-outside-toplevel
  stack = jnp.asarray(np.random.default_rng(0).normal(size=(8, 768, 2048)) * 0.02, jnp.float32)
  run = sharding_check.check_sharded_matches_unsharded(
      muon(0.01, batch_axes=1), {"k": stack}, {"k": P(None, "fsdp", "tensor")}, n_steps=1)
  for (op, shape), count in collections.Counter(
      sharding_check.collectives(run.compiled.as_text())).items():
    print(f"{count} x {op} {shape}")
  print(run.compiled.memory_analysis())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--muon-reps", type=int, default=3)
  parser.add_argument("--hlo", action="store_true")
  args = parser.parse_args()
  if args.hlo:
    print_sharded_collectives()
    return
  print(f"devices: {jax.devices()}")

  a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  peak_time = interleaved({"mm": matmul}, {"mm": (a, a)}, args.reps)["mm"]
  peak = 2 * 2048 ** 3 / peak_time
  print(f"fp32 matmul peak (2048^3, jit): {peak / 1e9:.1f} GFLOP/s")

  ns = jax.jit(linalg.newton_schulz)
  print(f"{'shape':>20} {'ms':>9} {'GFLOP/s':>9} {'of peak':>8}")
  for shape in [(768, 768), (768, 2048), (2048, 768), (12, 768, 768), (12, 768, 2048),
                (12, 2048, 768)]:
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    t = interleaved({"ns": ns, "mm": matmul}, {"ns": (x,), "mm": (a, a)}, args.reps)
    local_peak = 2 * 2048 ** 3 / t["mm"]
    rate = ns_flops(shape) / t["ns"]
    print(f"{str(shape):>20} {t['ns'] * 1e3:9.1f} {rate / 1e9:9.1f} {rate / local_peak:8.2f}")

  params = tree_124m()
  grads = jax.tree.map(lambda p: p * 0.5 + 0.01, params)
  ours = muon(0.02, batch_axes=batch_axes_124m(params))
  theirs = optax.contrib.muon(0.02, muon_weight_dimension_numbers=optax_dimension_numbers)
  fns, fargs = {}, {}
  for name, tx in (("ours", ours), ("optax", theirs)):
    state = tx.init(params)
    fns[name] = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p))
    fargs[name] = (grads, state, params)
  t = interleaved(fns, fargs, args.muon_reps)
  print(f"Muon step on the 124M tree: ours {t['ours']:.3f} s, optax.contrib.muon "
        f"{t['optax']:.3f} s, ratio {t['ours'] / t['optax']:.2f}")


if __name__ == "__main__":
  main()
