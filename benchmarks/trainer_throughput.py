"""Trainer throughput on this machine, three reports (any combination in one run):

  python benchmarks/trainer_throughput.py --mfu [--seq_len 128 --batch 4 --steps 8]
      tokens/s and MFU of the 124M config, and compile time of 12 vs 24 layers
      (layers are scanned, so it should stay flat).

  python benchmarks/trainer_throughput.py --peer [--shapes small,124m] [--rounds 2]
      [--torch_python PY]
      ours / a plain PyTorch peer (``benchmarks/torch_peer.py``, same block,
      float32, AdamW) in tokens/s, per shape. Each side runs in its own process,
      alternated ours, peer, ours, peer, ... (``--rounds`` pairs); medians and
      ranges over the rounds. ``--torch_python``: an interpreter with torch (the
      ``bench`` extra), default this one. ``--baseline DIR`` adds a third side,
      the trainer of another checkout (with this file copied into it), for
      before/after figures in the same run (``--baseline_env K=V``).

  python benchmarks/trainer_throughput.py --optimizers all|adamw,muon,... [--opt_shape small]
      each optimizer's step-time overhead over AdamW inside the full train step
      (``train.build`` + ``run.train_step``: clipping, metrics, the donated
      state), one process per optimizer, each timed alternately with an AdamW
      run in the same process.

Shapes are ``layers x d_model, heads, seq_len x batch, vocab`` (``SHAPES``, or
``L,d,H,S,B,V``). Ours is the trainer's own jitted step on one device with
synthetic token batches (no data pipeline, no checkpoints). MFU is model FLOPs
per token (``models.flops``, as MaxText counts them) x tokens/s over the
float32 matmul peak measured in the same run (CPU) or the device's bf16 table
peak (GPU/TPU).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from optbench_jax import host_memory  # pylint: disable=wrong-import-position

host_memory.retain_freed_memory()   # as the trainer does, before XLA starts its threads

# name: (layers, d_model, heads, seq_len, batch, vocab); the small and the 124M shape first.
SHAPES = {
    "small": (4, 256, 4, 256, 8, 8192),
    "124m": (12, 768, 12, 256, 4, 50304),
    "124m_s128": (12, 768, 12, 128, 4, 50304),
}


def parse_shape(text: str) -> tuple:
  if text in SHAPES:
    return SHAPES[text]
  values = tuple(int(v) for v in text.split(","))
  if len(values) != 6:
    raise SystemExit(f"shape {text!r}: a name of {sorted(SHAPES)} or L,d,H,S,B,V")
  return values


def shape_label(shape: tuple) -> str:
  layers, d, heads, seq, batch, vocab = shape
  return f"{layers} x {d}, {heads}, {seq} x {batch}, {vocab}"


def make_config(shape: tuple, dtype: str = "float32", optimizer: str = "adamw"):
  from configs import base  # pylint: disable=import-outside-toplevel
  layers, d, heads, seq, batch, vocab = shape
  c = base.base_config()
  c.model.update(num_layers=layers, d_model=d, num_heads=heads, vocab_size=vocab,
                 compute_dtype=dtype)
  c.data.update(seq_len=seq, global_batch_size=batch)
  c.optimizer.name = optimizer
  c.optimizer.schedule.update(warmup_steps=10)
  import optbench_jax.optim as O  # pylint: disable=import-outside-toplevel
  from optbench_jax.optim import factory_contract  # pylint: disable=import-outside-toplevel
  if factory_contract.owns_warmup(O.registry.hyperparameter_names(optimizer)):
    c.optimizer.schedule.name = "constant"   # schedule-free warms up itself (the trainer's rule)
  c.train.steps = 1000
  c.mesh.update(data=1)
  return c


class OurStep:
  """The trainer's assembled step (``train.build``) with its state and synthetic batches."""

  def __init__(self, config, devices, batches: int, seed: int = 0):
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from optbench_jax import train  # pylint: disable=import-outside-toplevel
    self.config = config
    self.run = train.build(config, devices)
    self.state = self.run.create_state(seed=seed)
    rng = np.random.default_rng(seed)
    shape = (config.data.global_batch_size, config.data.seq_len + 1)
    self.batches = []
    for _ in range(batches):
      tokens = rng.integers(0, config.model.vocab_size, size=shape, dtype=np.int32)
      self.batches.append(jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                                         self.run.batch_sharding))
    self.tokens_per_step = shape[0] * config.data.seq_len

  def steps(self, n: int, block_each: bool = False) -> list[float]:
    """Runs n steps; per-step seconds (or one total, dispatch-pipelined, if not block_each)."""
    import jax  # pylint: disable=import-outside-toplevel
    times, start = [], time.perf_counter()
    for i in range(n):
      self.state, m = self.run.train_step(self.state, self.batches[i % len(self.batches)])
      if block_each:
        jax.block_until_ready((self.state, m))
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    if not block_each:
      jax.block_until_ready((self.state, m))
      times.append(time.perf_counter() - start)
    return times


def worker_ours(shape: tuple, steps: int) -> dict:
  """One process of ours: compile + 2 warmup steps, then ``steps`` timed steps."""
  import jax  # pylint: disable=import-outside-toplevel
  ours = OurStep(make_config(shape), jax.devices()[:1], batches=4)
  ours.steps(2, block_each=True)
  times = ours.steps(steps, block_each=True)
  return dict(side="ours", jax=jax.__version__, step_times_s=times,
              tokens_per_s=steps * ours.tokens_per_step / sum(times))


def worker_overhead(shape: tuple, name: str, steps: int, rounds: int) -> dict:
  """``name``'s and AdamW's full train steps in one process, timed alternately."""
  import jax  # pylint: disable=import-outside-toplevel
  devices = jax.devices()[:1]
  runs = {"adamw": OurStep(make_config(shape), devices, batches=2)}
  if name != "adamw":
    runs[name] = OurStep(make_config(shape, optimizer=name), devices, batches=2)
  for r in runs.values():
    r.steps(2, block_each=True)
  times = {k: [] for k in runs}
  for _ in range(rounds):
    for k, r in runs.items():
      times[k] += r.steps(steps, block_each=True)
  return dict(name=name, adamw_s=statistics.median(times["adamw"]),
              step_s=statistics.median(times[name]),
              ratios=[b / a for a, b in zip(times["adamw"], times[name])])


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``), e.g. 'AMD EPYC': torch's MKL GEMMs run
  at about half XLA's speed on AMD CPUs and 1.24-1.31x faster on the Intel one of
  BUILD_NOTES, so ours / torch depends on it."""
  fields = {}
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      key, _, value = line.partition(":")
      fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  if "model name" in fields:
    return f"{fields['model name']}, {fields.get('vendor_id', '?')}"
  import platform  # pylint: disable=import-outside-toplevel
  return platform.processor() or "unknown CPU"


def run_json(cmd: list[str], env: dict | None = None) -> dict:
  """Runs ``cmd``; returns the JSON object on its last stdout line."""
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def med_range(values: list[float], fmt: str = "{:,.0f}") -> str:
  return (f"{fmt.format(statistics.median(values))} "
          f"({fmt.format(min(values))} - {fmt.format(max(values))})")


def report_peer(args) -> list[dict]:
  here = [sys.executable, __file__]
  rows = []
  head = ("| shape (layers x d, heads, seq x batch, vocab) | torch tokens/s | ours tokens/s "
          "| ours / torch |")
  if args.baseline:
    head += " baseline tokens/s | baseline / torch | ours / baseline |"
  print(head)
  print("| --- |" + " ---: |" * (head.count("|") - 2))
  blas = "unknown"
  for name in args.shapes.split(","):
    shape = parse_shape(name)
    flat = [str(v) for v in shape]
    peer_cmd = [args.torch_python, str(ROOT / "benchmarks" / "torch_peer.py"),
                *sum(([f"--{k}", v] for k, v in zip(
                    ("layers", "d_model", "heads", "seq_len", "batch", "vocab"), flat)), []),
                "--steps", str(args.steps)]
    ours_cmd = [*here, "--worker", "ours", "--shape", ",".join(flat), "--steps", str(args.steps)]
    base_cmd = [sys.executable, str(pathlib.Path(args.baseline) / "benchmarks" /
                                    "trainer_throughput.py"), *ours_cmd[2:]]
    base_env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.baseline_env if kv))
    ours, peer, base = [], [], []
    for _ in range(args.rounds):        # A B A B ... (A B C A B C with --baseline)
      ours.append(run_json(ours_cmd)["tokens_per_s"])
      peer_run = run_json(peer_cmd)
      peer.append(peer_run["tokens_per_s"])
      blas = peer_run.get("blas", "unknown")
      if args.baseline:
        base.append(run_json(base_cmd, env=base_env)["tokens_per_s"])
    ratios = [o / p for o, p in zip(ours, peer)]
    rows.append(dict(shape=shape_label(shape), cpu=cpu_model(), torch_blas=blas,
                     ours=ours, torch=peer, ratios=ratios,
                     baseline=base, baseline_ratios=[b / p for b, p in zip(base, peer)]))
    line = (f"| {shape_label(shape)} | {med_range(peer)} | {med_range(ours)} "
            f"| {med_range(ratios, '{:.2f}')} |")
    if args.baseline:
      line += (f" {med_range(base)} | {med_range(rows[-1]['baseline_ratios'], '{:.2f}')} "
               f"| {med_range([o / b for o, b in zip(ours, base)], '{:.2f}')} |")
    print(line, flush=True)
  print(f"\ntorch's BLAS: {blas} (on {cpu_model()})")
  return rows


def report_overheads(args) -> list[dict]:
  import optbench_jax.optim as O  # pylint: disable=import-outside-toplevel
  names = O.names() if args.optimizers == "all" else args.optimizers.split(",")
  shape = parse_shape(args.opt_shape)
  print(f"\nfull train step, {shape_label(shape)}, float32, one device; ratio = optimizer's "
        f"step / AdamW's step in the same process, median (range) of {args.rounds} x "
        f"{args.steps} alternated steps\n")
  print("| optimizer | ms/step | AdamW ms/step | / AdamW |")
  print("| --- | ---: | ---: | ---: |")
  rows = []
  for name in names:
    cmd = [sys.executable, __file__, "--worker", "overhead", "--name", name, "--shape",
           ",".join(str(v) for v in shape), "--steps", str(args.steps), "--rounds",
           str(args.rounds)]
    try:
      r = run_json(cmd)
    except RuntimeError as error:
      print(f"| {name} | failed: {str(error).splitlines()[-1][:100]} | | |", flush=True)
      continue
    rows.append(r)
    print(f"| {name} | {1e3 * r['step_s']:.1f} | {1e3 * r['adamw_s']:.1f} "
          f"| {med_range(r['ratios'], '{:.2f}')} |", flush=True)
  return rows


def report_mfu(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from optbench_jax import models, train  # pylint: disable=import-outside-toplevel
  from optbench_jax.train import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
  devices = jax.devices()[:1]
  peak, source = metrics_lib.peak_flops(devices)
  shape = (12, 768, 12, args.seq_len, args.batch, 50304)
  config = make_config(shape, args.dtype)
  ours = OurStep(config, devices, batches=args.steps)
  first = ours.steps(1, block_each=True)[0]
  elapsed = ours.steps(args.steps - 1)[0]
  tokens_per_s = (args.steps - 1) * ours.tokens_per_step / elapsed
  flops_per_token = models.flops.flops_per_token(config.model, args.seq_len)
  del ours

  def compile_seconds(layers):
    run = train.build(make_config((layers, *shape[1:]), args.dtype), devices)
    start = time.perf_counter()
    run.train_step.lower(run.state_target(), run.abstract_batch()).compile()
    return time.perf_counter() - start

  compile_12, compile_24 = compile_seconds(12), compile_seconds(24)
  result = dict(
      device=devices[0].device_kind, peak_flops=peak, peak_source=source,
      params=models.count_params(config.model)["total"], seq_len=args.seq_len,
      batch=args.batch, dtype=args.dtype, step_time_s=elapsed / (args.steps - 1),
      first_step_s=first, tokens_per_s=tokens_per_s, flops_per_token=flops_per_token,
      mfu=flops_per_token * tokens_per_s / peak,
      compile_s_12_layers=compile_12, compile_s_24_layers=compile_24,
      compile_ratio_24_over_12=compile_24 / compile_12)
  print(json.dumps(result, indent=2))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mfu", action="store_true", help="the 124M tokens/s, MFU, compile report")
  parser.add_argument("--peer", action="store_true", help="ours / PyTorch tokens/s per shape")
  parser.add_argument("--optimizers", default="", help="'all' or names: overhead over AdamW")
  parser.add_argument("--shapes", default="small,124m")
  parser.add_argument("--opt_shape", default="small")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--torch_python", default=sys.executable)
  parser.add_argument("--baseline", default="",
                      help="--peer: also time the trainer of this other checkout (before/after)")
  parser.add_argument("--baseline_env", nargs="*", default=[],
                      help="K=V settings for the baseline's processes")
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=0, help="timed steps (default 8 mfu, 5 else)")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--json", default="", help="also write the results here")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--shape", default="", help=argparse.SUPPRESS)
  parser.add_argument("--name", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker == "ours":
    print(json.dumps(worker_ours(parse_shape(args.shape), args.steps or 5)))
    return
  if args.worker == "overhead":
    print(json.dumps(worker_overhead(parse_shape(args.shape), args.name, args.steps or 5,
                                     args.rounds)))
    return
  if not (args.mfu or args.peer or args.optimizers):
    args.mfu = True
  print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), load average "
        f"{os.getloadavg()[0]:.1f} at start\n")
  results = {}
  if args.peer:
    args.steps = args.steps or 5
    results["peer"] = report_peer(args)
  if args.optimizers:
    args.steps = args.steps or 5
    results["optimizers"] = report_overheads(args)
  if args.mfu:
    args.steps = args.steps or 8
    results["mfu"] = report_mfu(args)
  print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
