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
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import optbench_jax.optim as O
from optbench_jax.optim.kron import scale_by_kron
from optbench_jax.optim.soap import scale_by_soap


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
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def time_call(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--frequency", type=int, default=10)
  parser.add_argument("--kron_probability", type=float, default=0.1)
  args = parser.parse_args()

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

  rows = {}
  st = adamw.init(params)
  rows["adamw"] = [(jax.jit(adamw.update, donate_argnums=1), st, "plain")]
  st = soap.init(params)  # identity bases: timing does not depend on their values
  soap_update = jax.jit(soap.update, donate_argnums=1)
  rows["soap"] = [(soap_update, st, "plain"), (soap_update, soap.init(params), "refresh")]
  st_bytes = {"adamw": state_bytes(rows["adamw"][0][1]), "soap": state_bytes(st)}
  st = kron_plain.init(params)
  st_bytes["kron"] = state_bytes(st)
  rows["kron"] = [(jax.jit(kron_plain.update, donate_argnums=1), st, "plain"),
                  (jax.jit(kron_fit.update, donate_argnums=1), kron_fit.init(params), "refresh")]
  del st

  times = {name: {v: [] for _, _, v in entries} for name, entries in rows.items()}
  states = {(name, v): s for name, entries in rows.items() for _, s, v in entries}
  for rep in range(args.repeats + 1):  # first round compiles
    for name, entries in rows.items():
      for fn, _, variant in entries:
        s = states[(name, variant)]
        # pin the count so every repetition times the same kind of step
        if name == "soap":
          s = s._replace(count=jnp.asarray(2 if variant == "plain" else f, jnp.int32))
        start = time.perf_counter()
        out = fn(grads, s, params)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - start
        states[(name, variant)] = out[1]
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
          f"{amortised[name] / base:8.2f} {st_bytes[name] / n_params:14.2f}")
  print(f"(SOAP precondition_frequency={f}; Kron update probability={args.kron_probability})")


if __name__ == "__main__":
  main()
