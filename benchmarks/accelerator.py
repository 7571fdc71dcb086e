"""One-call accelerator benchmark: throughput, MFU and memory per attention kernel, optimizer
overheads and Newton-Schulz TFLOP/s, written as JSON and a Markdown table.

    python benchmarks/accelerator.py                      # one GPU/TPU, <= 8 minutes
    python benchmarks/accelerator.py --smoke              # CPU, tiny shapes, seconds (CI)
    python benchmarks/accelerator.py --budget_s 300 --out_dir /tmp/acc

Sections, in priority order (the run time-boxes itself: a section that would
start after ``--budget_s`` is recorded as skipped, and everything measured so
far is written after each section):

1. ``configs/124m.py`` and ``configs/520m.py`` in bfloat16 on one device, for each
   ``model.attention_impl`` (cudnn, splash, xla; one the backend cannot run is
   recorded as unavailable with the reason, as is one that fails to compile or
   run): tokens/s, MFU (``models.flops`` x tokens/s over the device's bf16 peak
   from ``train.metrics.PEAK_FLOPS``), the compiled step's memory
   (``memory_analysis``: arguments + outputs + temporaries) and the device's
   peak bytes in use so far (``memory_stats``; a running maximum over the
   process). The micro-batch is the preset's sequence length x a fixed row
   count; remat is the least recompute that ``train/memory.py`` says fits 85%
   of the device's memory (none, dots, full).
2. AdamW, Muon, SOAP and Kron: the full train step of the 124M model (best
   attention kernel), timed alternately, each as a ratio to AdamW's step.
3. Newton-Schulz (run before 2, which compiles four steps) (``optim.linalg.newton_schulz``, 5 steps) on the 124M and 520m
   hidden-matrix stacks in float32 and bfloat16: TFLOP/s
   (``benchmarks/newton_schulz.ns_flops``).

``--smoke`` runs the same code on tiny shapes of both models on CPU (float32;
splash only runs in Pallas interpret mode there, which is no throughput
figure, so it is recorded as unavailable; AdamW and Muon only). The AdamW
entry of section 2 reuses section 1's compiled 124M step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform as platform_lib
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import newton_schulz as ns_bench  # pylint: disable=g-import-not-at-top
from configs import base  # pylint: disable=g-import-not-at-top
from optbench_jax import models
from optbench_jax import train
from optbench_jax.models import attention_kernels
from optbench_jax.optim import linalg
from optbench_jax.train import memory
from optbench_jax.train import metrics as metrics_lib
from optbench_jax.train import state as state_lib

GIB = 2.0**30
IMPLS = ("cudnn", "splash", "xla")
OPTIMIZERS = ("adamw", "muon", "soap", "kron")
# name -> model overrides, seq_len, rows per step (full run / smoke)
MODELS = {
    "124m": (dict(num_layers=12, d_model=768, num_heads=12), 512, 64),
    "520m": (dict(num_layers=32, d_model=1024, ffn_dim=4096, num_heads=16, tie_embeddings=False),
             4096, 8),
}
SMOKE_MODELS = {
    "124m": (dict(num_layers=1, d_model=32, num_heads=2, ffn_dim=64, vocab_size=256), 128, 1),
    "520m": (dict(num_layers=2, d_model=32, ffn_dim=64, num_heads=2, vocab_size=256,
                  tie_embeddings=False), 128, 1),
}


class Budget:
  def __init__(self, seconds: float):
    self.start, self.seconds = time.perf_counter(), seconds

  def left(self) -> float:
    return self.seconds - (time.perf_counter() - self.start)


def make_config(overrides: dict, seq_len: int, rows: int, dtype: str, impl: str, remat: str,
                optimizer: str = "adamw"):
  c = base.base_config()
  c.model.update(overrides, compute_dtype=dtype, attention_impl=impl, remat=remat)
  c.data.update(source="synthetic", seq_len=seq_len, global_batch_size=rows,
                synthetic_vocab_size=min(512, c.model.vocab_size))
  c.optimizer.update(name=optimizer)
  c.optimizer.schedule.update(warmup_steps=10)
  c.train.steps = 100_000
  c.mesh.update(data=1, fsdp=1)
  return c


def device_hbm(device) -> float | None:
  try:
    return float((device.memory_stats() or {}).get("bytes_limit")) or None
  except Exception:  # pylint: disable=broad-except
    return None


def pick_remat(overrides, seq_len, rows, dtype, impl, device) -> str:
  """The least recompute whose estimated memory (train/memory.py) fits 85% of the device."""
  hbm = device_hbm(device)
  if hbm is None:
    return "none"
  for remat in ("none", "dots", "full"):
    run = train.build(make_config(overrides, seq_len, rows, dtype, impl, remat), [device],
                      abstract=True)
    fixed = 2 * state_lib.total_bytes(run.abstract_state.params) + state_lib.total_bytes(
        run.abstract_state.opt_state)
    acts = memory.activation_bytes(run.config.model, seq_len, rows, run.attention_impl)["total"]
    if fixed + acts <= 0.85 * hbm:
      return remat
  return "full"


def peak_bytes_in_use(device) -> float | None:
  try:
    return float((device.memory_stats() or {}).get("peak_bytes_in_use")) or None
  except Exception:  # pylint: disable=broad-except
    return None


def compiled_step(config, device):
  run = train.build(config, [device])
  start = time.perf_counter()
  step = run.train_step.lower(run.state_target(), run.abstract_batch()).compile()
  compile_s = time.perf_counter() - start
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.data.synthetic_vocab_size,
                        size=(config.data.global_batch_size, config.data.seq_len + 1),
                        dtype=np.int32)
  batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                         run.batch_sharding)
  return run, step, batch, compile_s


def time_steps(step, state, batch, n: int):
  state, m = step(state, batch)          # warm-up (first run after compile)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(n):
    state, m = step(state, batch)
  jax.block_until_ready((state, m))
  return state, (time.perf_counter() - start) / n


def bench_model(name, spec, impl, dtype, device, steps, peak, keep=None):
  """One model x attention kernel; ``keep`` (a dict) receives the compiled step, state and
  batch so the optimizer section reuses them as its AdamW entry (one compile fewer)."""
  overrides, seq_len, rows = spec
  probe = dict(overrides, compute_dtype=dtype)
  head_dim = probe["d_model"] // probe["num_heads"]
  try:
    resolved = attention_kernels.resolve(impl, device.platform, dtype, head_dim)
  except ValueError as e:
    return dict(model=name, attention_impl=impl, status="unavailable", reason=str(e))
  if impl == "splash" and device.platform != "tpu":
    return dict(model=name, attention_impl=impl, status="unavailable",
                reason="splash runs only in Pallas interpret mode off TPU (no throughput figure)")
  remat = pick_remat(overrides, seq_len, rows, dtype, impl, device)
  config = make_config(overrides, seq_len, rows, dtype, impl, remat)
  run, step, batch, compile_s = compiled_step(config, device)
  mem = step.memory_analysis()
  footprint = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes) if mem is not None else None
  state = run.create_state(seed=0)
  state, step_s = time_steps(step, state, batch, steps)
  if keep is not None:
    keep.update(step=step, state=state, batch=batch, remat=remat)
  del state
  tokens_per_s = rows * seq_len / step_s
  flops = models.flops.flops_per_token(config.model, seq_len)
  return dict(model=name, attention_impl=resolved, status="ok", remat=remat, dtype=dtype,
              seq_len=seq_len, rows=rows, params=models.count_params(config.model)["total"],
              compile_s=compile_s, step_s=step_s, tokens_per_s=tokens_per_s,
              mfu=flops * tokens_per_s / peak, step_footprint_gib=(footprint or 0) / GIB,
              peak_bytes_in_use_gib=(peak_bytes_in_use(device) or 0) / GIB)


def bench_optimizers(spec, impl, dtype, device, steps, rounds, budget, names, adamw=None):
  overrides, seq_len, rows = spec
  remat = adamw["remat"] if adamw else pick_remat(overrides, seq_len, rows, dtype, impl, device)
  compiled, out = {}, {}
  if adamw:
    compiled["adamw"] = [adamw["step"], adamw["state"], adamw["batch"]]
    out["adamw"] = dict(status="ok", compile_s=None)
  for name in names:
    if name in compiled:
      continue
    if budget.left() < 0:
      out[name] = dict(status="skipped", reason="time budget")
      continue
    try:
      run, step, batch, compile_s = compiled_step(
          make_config(overrides, seq_len, rows, dtype, impl, remat, name), device)
      compiled[name] = [step, run.create_state(seed=0), batch]
      out[name] = dict(status="ok", compile_s=compile_s)
    except Exception as e:  # pylint: disable=broad-except  (recorded, the run goes on)
      out[name] = dict(status="failed", reason=f"{type(e).__name__}: {e}"[:300])
  times = {name: [] for name in compiled}
  for _ in range(rounds):                 # alternate: every round times each optimizer
    for name, entry in compiled.items():
      entry[1], t = time_steps(entry[0], entry[1], entry[2], steps)
      times[name].append(t)
  for name, t in times.items():
    out[name]["step_s"] = statistics.median(t)
  if "adamw" in times:
    for name in times:
      out[name]["ratio_to_adamw"] = out[name]["step_s"] / out["adamw"]["step_s"]
  return dict(remat=remat, attention_impl=impl, optimizers=out)


def bench_newton_schulz(shapes, reps):
  rows = []
  ns = jax.jit(linalg.newton_schulz)
  for shape in shapes:
    for dtype in ("float32", "bfloat16"):
      x = jnp.asarray(np.random.default_rng(1).normal(size=shape), dtype)
      t = ns_bench.interleaved({"ns": ns}, {"ns": (x,)}, reps)["ns"]
      rows.append(dict(shape=list(shape), dtype=dtype, ms=t * 1e3,
                       tflops=ns_bench.ns_flops(shape) / t / 1e12))
  return rows


def markdown(result) -> str:
  lines = [f"# Accelerator benchmark ({result['device']}, jax {result['jax']})", "",
           "| model | attention | status | remat | tokens/s | MFU | step GiB | peak GiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in result["models"]:
    if r["status"] == "ok":
      lines.append(f"| {r['model']} | {r['attention_impl']} | ok | {r['remat']} | "
                   f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['step_footprint_gib']:.1f} | "
                   f"{r['peak_bytes_in_use_gib']:.1f} |")
    else:
      lines.append(f"| {r['model']} | {r['attention_impl']} | {r['status']}: "
                   f"{r.get('reason', '')[:140]} | | | | | |")
  opt = result.get("optimizers") or {}
  if opt.get("optimizers"):
    lines += ["", f"Optimizer step time, 124M (attention {opt['attention_impl']}, "
              f"remat {opt['remat']}):", "", "| optimizer | step s | / AdamW |", "| --- | --- | --- |"]
    for name, r in opt["optimizers"].items():
      lines.append(f"| {name} | {r.get('step_s', float('nan')):.4f} | "
                   f"{r.get('ratio_to_adamw', float('nan')):.3f} |" if "step_s" in r else
                   f"| {name} | {r['status']}: {r.get('reason', '')[:60]} | |")
  if result.get("newton_schulz"):
    lines += ["", "Newton-Schulz (5 steps):", "", "| shape | dtype | ms | TFLOP/s |",
              "| --- | --- | --- | --- |"]
    for r in result["newton_schulz"]:
      lines.append(f"| {tuple(r['shape'])} | {r['dtype']} | {r['ms']:.2f} | {r['tflops']:.1f} |")
  for name, why in result.get("skipped", {}).items():
    lines.append(f"\nSkipped {name}: {why}")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (CI)")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="stop starting new measurements after this (default 420; smoke 20)")
  parser.add_argument("--out_dir", default="benchmarks/results")
  args = parser.parse_args(argv)
  budget = Budget(args.budget_s or (20 if args.smoke else 420))
  device = jax.devices()[0]
  if args.smoke:
    specs, dtype, steps, rounds = SMOKE_MODELS, "float32", 2, 2
    optimizers = OPTIMIZERS[:2]   # SOAP's and Kron's step compiles take 9-22 s on 2 CPU cores
    ns_shapes, ns_reps = [(32, 64), (2, 32, 64)], 2
  else:
    specs, dtype, steps, rounds = MODELS, "bfloat16", 10, 3
    optimizers = OPTIMIZERS
    ns_shapes, ns_reps = [(768, 2048), (12, 768, 2048), (1024, 4096), (32, 1024, 4096)], 5
  peak, peak_source = metrics_lib.peak_flops([device])
  result = dict(device=device.device_kind, platform=device.platform, jax=jax.__version__,
                host=platform_lib.node(), smoke=args.smoke, peak_flops=peak,
                peak_source=peak_source, models=[], optimizers=None, newton_schulz=None,
                skipped={})
  os.makedirs(args.out_dir, exist_ok=True)

  def write():
    result["elapsed_s"] = budget.seconds - budget.left()
    with open(os.path.join(args.out_dir, "accelerator.json"), "w") as f:
      json.dump(result, f, indent=2)
    with open(os.path.join(args.out_dir, "accelerator.md"), "w") as f:
      f.write(markdown(result))

  best, adamw_124m = {}, {}
  for name in specs:                    # both models with the fastest kernel first, then the rest
    for impl in IMPLS:
      if budget.left() < 0:
        result["models"].append(dict(model=name, attention_impl=impl, status="skipped",
                                     reason="time budget"))
        continue
      try:
        keep = adamw_124m if name == "124m" and "124m" not in best else None
        r = bench_model(name, specs[name], impl, dtype, device, steps, peak, keep)
      except Exception as e:  # pylint: disable=broad-except  (recorded; the run goes on)
        r = dict(model=name, attention_impl=impl, status="failed",
                 reason=f"{type(e).__name__}: {e}"[:300])
        traceback.print_exc()
      result["models"].append(r)
      if r["status"] == "ok" and name not in best:
        best[name] = impl
      gc.collect()
      write()
  if budget.left() > 0:   # seconds on an accelerator: before the optimizers' four compiles
    result["newton_schulz"] = bench_newton_schulz(ns_shapes, ns_reps)
  else:
    result["skipped"]["newton_schulz"] = "time budget"
  write()
  if budget.left() > 0:
    impl = best.get("124m", "xla")
    result["optimizers"] = bench_optimizers(specs["124m"], impl, dtype, device, steps, rounds,
                                            budget, optimizers, adamw_124m or None)
    adamw_124m.clear()
  else:
    result["skipped"]["optimizers"] = "time budget"
  write()
  print(markdown(result))
  print(f"wrote {args.out_dir}/accelerator.json and accelerator.md "
        f"({result['elapsed_s']:.0f} s)")
  return result


if __name__ == "__main__":
  main()
