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
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--layers", type=int, default=12, help="layers of the timed tree")
  parser.add_argument("--state_layers", type=int, default=12,
                      help="layers of the tree whose state bytes are counted (shapes only)")
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
