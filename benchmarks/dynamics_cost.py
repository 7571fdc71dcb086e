"""What ``train.dynamics_every = 1`` costs: step time with the dynamics measurement vs without.

  python benchmarks/dynamics_cost.py [--shape small] [--pairs 20]

One process, one device, the trainer's own jitted step (``train.build``) on
synthetic token batches. ``--pairs`` times alternate one plain step with one
step as the loop runs it with dynamics every step: copy the parameters, the
step, ``train/dynamics.py``'s measurement, and pulling its record to the host.
Reported: the median seconds per step of each side and their ratio (single
steps alternated, so both sides see the same machine load). Shapes as ``benchmarks/trainer_throughput.py`` (``L,d,H,S,B,V``).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from optbench_jax import host_memory  # pylint: disable=wrong-import-position

host_memory.retain_freed_memory()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from optbench_jax import config as config_lib  # pylint: disable=wrong-import-position
from optbench_jax import train  # pylint: disable=wrong-import-position
from optbench_jax.train import dynamics  # pylint: disable=wrong-import-position

SHAPES = {"small": (4, 256, 4, 256, 8, 8192), "124m": (12, 768, 12, 256, 4, 50304)}


def build(shape: tuple):
  layers, d, heads, seq, batch, vocab = shape
  config = config_lib.base_config()
  config.model.update(num_layers=layers, d_model=d, num_heads=heads, vocab_size=vocab)
  config.data.update(seq_len=seq, global_batch_size=batch, synthetic_vocab_size=min(512, vocab))
  config.train.update(steps=10_000, dynamics_every=1)
  config.mesh.update(data=1)
  return train.build(config, jax.devices()[:1]), (batch, seq, vocab)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="small")
  parser.add_argument("--pairs", type=int, default=20)
  args = parser.parse_args()
  shape = SHAPES.get(args.shape) or tuple(int(v) for v in args.shape.split(","))
  run, (batch, seq, vocab) = build(shape)
  tokens = np.random.default_rng(0).integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
  data = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  copy, measure = dynamics.make_measure(run.state_shardings.params, run.mesh)
  state = run.create_state()

  def plain(state):
    state, metrics = run.train_step(state, data)
    jax.block_until_ready(metrics)
    return state

  def with_dynamics(state):
    before = copy(state.params)
    state, metrics = run.train_step(state, data)
    record = dynamics.to_record(jax.device_get(measure(before, state.params)))
    jax.block_until_ready(metrics)
    return state, len(record)

  state = plain(state)                 # compile both
  state, keys = with_dynamics(state)
  times = {"off": [], "every step": []}
  for _ in range(args.pairs):   # alternate single steps: both sides see the same machine load
    start = time.perf_counter()
    state = plain(state)
    times["off"].append(time.perf_counter() - start)
    start = time.perf_counter()
    state, _ = with_dynamics(state)
    times["every step"].append(time.perf_counter() - start)
  off, on = statistics.median(times["off"]), statistics.median(times["every step"])
  print(f"shape {shape} (L, d, H, S, B, V), {jax.devices()[0].platform}, {keys} dynamics keys, "
        f"{args.pairs} pairs")
  for name, values in times.items():
    q = statistics.quantiles(values, n=4)
    print(f"  {name:>10}: median {statistics.median(values) * 1e3:8.1f} ms/step "
          f"(quartiles {q[0] * 1e3:.1f} - {q[2] * 1e3:.1f})")
  print(f"  ratio (dynamics_every=1 / off): {on / off:.3f}")


if __name__ == "__main__":
  main()
