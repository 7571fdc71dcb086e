"""Trainer throughput on this machine: tokens/s and MFU of the 124M config, and
compile time of 12 vs 24 layers (layers are scanned, so it should stay flat).

  python benchmarks/trainer_throughput.py [--seq_len 128 --batch 4 --steps 8]

MFU is model FLOPs per token (``models.flops``, as MaxText counts them) x
tokens/s over the float32 matmul peak measured in the same run (CPU) or the
device's bf16 table peak (GPU/TPU). Uses the trainer's own jitted step on one
device, with synthetic token batches (no data pipeline, no checkpoints).
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # pylint: disable=g-import-not-at-top
from optbench_jax import models
from optbench_jax import train
from optbench_jax.train import metrics as metrics_lib


def build(config, devices):
  """The trainer's own assembly (``optbench_jax.train.build``)."""
  run = train.build(config, devices)
  return run.optimizer, run.state_shardings, run.batch_sharding, run.train_step, run


def batch_for(config, rng):
  tokens = rng.integers(0, config.model.vocab_size,
                        size=(config.data.global_batch_size, config.data.seq_len + 1),
                        dtype=np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def make_config(num_layers, seq_len, batch, dtype):
  c = base.base_config()
  c.model.update(num_layers=num_layers, d_model=768, num_heads=12, compute_dtype=dtype)
  c.data.update(seq_len=seq_len, global_batch_size=batch)
  c.optimizer.schedule.update(warmup_steps=10)
  c.train.steps = 1000
  c.mesh.update(data=1)
  return c


def compile_seconds(config, devices):
  run = train.build(config, devices)
  start = time.perf_counter()
  run.train_step.lower(run.state_target(), run.abstract_batch()).compile()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  devices = jax.devices()[:1]
  peak, source = metrics_lib.peak_flops(devices)

  config = make_config(12, args.seq_len, args.batch, args.dtype)
  _, _, batch_sharding, train_step, run = build(config, devices)
  state = run.create_state(seed=0)
  rng = np.random.default_rng(0)
  batches = [jax.device_put(batch_for(config, rng), batch_sharding) for _ in range(args.steps)]
  start = time.perf_counter()
  state, m = train_step(state, batches[0])
  jax.block_until_ready(m)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for b in batches[1:]:
    state, m = train_step(state, b)
  jax.block_until_ready((state, m))
  elapsed = time.perf_counter() - start
  tokens = (args.steps - 1) * args.batch * args.seq_len
  tokens_per_s = tokens / elapsed
  flops_per_token = models.flops.flops_per_token(config.model, args.seq_len)
  del state, batches

  compile_12 = compile_seconds(make_config(12, args.seq_len, args.batch, args.dtype), devices)
  compile_24 = compile_seconds(make_config(24, args.seq_len, args.batch, args.dtype), devices)
  result = dict(
      device=devices[0].device_kind, peak_flops=peak, peak_source=source,
      params=models.count_params(config.model)["total"], seq_len=args.seq_len,
      batch=args.batch, dtype=args.dtype, step_time_s=elapsed / (args.steps - 1),
      first_step_s=first, tokens_per_s=tokens_per_s, flops_per_token=flops_per_token,
      mfu=flops_per_token * tokens_per_s / peak,
      compile_s_12_layers=compile_12, compile_s_24_layers=compile_24,
      compile_ratio_24_over_12=compile_24 / compile_12)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
