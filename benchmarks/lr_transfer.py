"""Does the tuned learning rate transfer across width? A sweep per parametrization.

  python benchmarks/lr_transfer.py --out=runs/lr_transfer \\
      [--widths=32,64,128,256] [--optimizers=adamw,muon] [--parametrizations=standard,mup] \\
      [--lrs=9] [--steps=200]

For each optimizer and parametrization, trains a 2-layer Llama at every width
(``d_model``; 4 heads, ``ffn_dim = 4 d``, ``base_width`` = the smallest width)
at every learning rate of a log2-spaced grid (``--lrs`` values, a factor 2
apart, centred on the optimizer's usual rate) on the built-in synthetic corpus,
through the trainer (``optbench_jax.train.run``: the run's own schedule,
optimizer and, under ``mup``, the optimizer's scaling rule from
``optim/width_rules.py``, ``optimizer.lr_scaling="auto"``), and takes the
evaluation loss at the end. Per width the optimum lr* is the grid's best,
refined by a parabola in log2(lr) through it and its neighbours when it is
inside the grid. The drift is the least-squares slope of log2(lr*) on
log2(width): the factor ``2^slope`` by which the optimum moves per doubling of
width (1.0 = it transfers; 0.5 = it halves, as standard Adam's should). The
transfer regret is what tuning at the narrowest width costs at the widest: the
widest width's loss at the narrowest width's best grid rate minus its own best
(an infinite regret: that rate diverges there).

Writes ``OUT/lr_transfer.json`` (every run's loss, the optima, the slopes) and
``OUT/lr_transfer.png`` (loss vs lr per width, a panel per optimizer and
parametrization, optima marked). Finished runs are kept in the JSON, so a rerun
with the same settings resumes. Hyperball (``adamh``, ``muonh``) is accepted in
``--optimizers``; it applies no rate rule (``native``), and its Adam branch
(embedding, vectors) takes 0.4 x the swept rate, the authors' ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

# The grid's centre (log2 of the learning rate) per optimizer: its usual rate at small width.
# Hyperball's rate is an angle per step; at d = 32..64 its optimum lay on the edge of a grid
# centred on its default 0.02 (2^-6 +- 3), so its grid reaches 2^-1.
CENTRES = {"adamw": -6, "muon": -5, "adamh": -5, "muonh": -5}
# Muon's AdamW branch (embedding = tied readout, vectors) takes the swept rate too
# (``adam_learning_rate=None``): held at a constant tuned for ``standard`` it is far below what
# the µP readout wants at large width (1/m_w logits), and the sweep would measure that branch,
# not the transfer (first run of this benchmark, BUILD_NOTES). Hyperball's rate is an angle,
# not comparable with Adam's: its Adam branch moves with the swept rate at the authors' ratio
# (0.008 / 0.02); held at 0.008 it starved the embedding at small width (BUILD_NOTES).
HPARAMS = {"adamw": dict(b1=0.9, b2=0.99), "muon": dict(adam_learning_rate=None),
           "adamh": {}, "muonh": {}}
ADAM_BRANCH_RATIO = {"adamh": 0.4, "muonh": 0.4}


def run_config(data_dir: str, optimizer: str, parametrization: str, width: int, base: int,
               lr: float, steps: int, init_std: float | None = None):
  """The trainer config of one run (a tiny Llama on the synthetic corpus, one device);
  ``init_std`` replaces the model's default sigma (0.02)."""
  from configs import tiny   # pylint: disable=import-outside-toplevel
  c = tiny.get_config()
  c.model.update(num_layers=2, d_model=width, num_heads=4, ffn_dim=4 * width, vocab_size=512,
                 parametrization=parametrization, base_width=base, base_depth=2)
  if init_std is not None:
    c.model.init_std = init_std
  c.data.update(path=data_dir, seq_len=64, global_batch_size=8, synthetic_vocab_size=512,
                synthetic_train_tokens=400_000, synthetic_val_tokens=8_192, prefetch_threads=0)
  c.optimizer.update(name=optimizer, learning_rate=lr, weight_decay=0.0, grad_clip=1.0)
  c.optimizer.hparams = dict(HPARAMS.get(optimizer, {}))
  if optimizer in ADAM_BRANCH_RATIO:
    c.optimizer.hparams["adam_learning_rate"] = ADAM_BRANCH_RATIO[optimizer] * lr
  c.optimizer.schedule.update(name="cosine", warmup_steps=max(1, steps // 10),
                              final_fraction=0.1)
  c.train.update(steps=steps, log_every=steps, eval_every=steps, eval_batches=4,
                 full_eval_at_end=False, checkpoint_every=0)
  c.mesh.update(data=1, fsdp=1, tensor=1, expert=1)
  return c


def optimum(lrs: list[float], losses: list[float]) -> tuple[float, bool]:
  """(lr*, inside): the grid's best, refined by a parabola in log2(lr) when it is interior."""
  x = np.log2(np.asarray(lrs, float))
  y = np.asarray(losses, float)
  y = np.where(np.isfinite(y), y, np.inf)
  i = int(np.argmin(y))
  if i == 0 or i == len(x) - 1 or not np.all(np.isfinite(y[i - 1:i + 2])):
    return float(2.0 ** x[i]), False
  a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
  vertex = -b / (2 * a) if a > 0 else x[i]
  return float(2.0 ** np.clip(vertex, x[i - 1], x[i + 1])), True


def drift(widths: list[int], optima: list[float]) -> float:
  """Least-squares slope of log2(lr*) on log2(width)."""
  return float(np.polyfit(np.log2(widths), np.log2(optima), 1)[0])


def summarise(runs: dict, widths, optimizers, parametrizations, lrs_of) -> dict:
  out = {}
  for opt in optimizers:
    for par in parametrizations:
      key = f"{opt}/{par}"
      optima, inside = [], []
      for w in widths:
        lrs = lrs_of(opt)
        losses = [runs.get(run_key(opt, par, w, lr), math.inf) for lr in lrs]
        best, interior = optimum(lrs, losses)
        optima.append(best)
        inside.append(interior)
      slope = drift(widths, optima)
      # What a user who tunes at the narrowest width and trains the widest loses: the widest
      # width's loss at the narrowest width's best grid rate, minus its own best.
      lrs = lrs_of(opt)
      narrow = [runs.get(run_key(opt, par, widths[0], lr), math.inf) for lr in lrs]
      wide = [runs.get(run_key(opt, par, widths[-1], lr), math.inf) for lr in lrs]
      regret = wide[int(np.argmin(narrow))] - min(wide)
      out[key] = {"optimum": dict(zip(map(str, widths), optima)),
                  "interior": dict(zip(map(str, widths), inside)),
                  "slope_log2": slope, "factor_per_doubling": 2.0 ** slope,
                  "transfer_regret": regret}
  return out


def run_key(optimizer: str, parametrization: str, width: int, lr: float) -> str:
  return f"{optimizer}/{parametrization}/w{width}/lr{lr:.6g}"


def plot(result: dict, path: str) -> str:
  import matplotlib   # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt   # pylint: disable=import-outside-toplevel
  optimizers, parametrizations = result["optimizers"], result["parametrizations"]
  fig, axes = plt.subplots(len(optimizers), len(parametrizations), squeeze=False,
                           figsize=(4.5 * len(parametrizations), 3.4 * len(optimizers)))
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(result["widths"])))
  for r, opt in enumerate(optimizers):
    lrs = result["lrs"][opt]
    for c, par in enumerate(parametrizations):
      ax = axes[r][c]
      summary = result["summary"][f"{opt}/{par}"]
      for color, w in zip(colors, result["widths"]):
        losses = [result["runs"].get(run_key(opt, par, w, lr), np.nan) for lr in lrs]
        ax.plot(lrs, losses, "o-", color=color, label=f"d={w}", ms=3)
        ax.axvline(summary["optimum"][str(w)], color=color, lw=0.8, ls=":")
      ax.set_xscale("log", base=2)
      finite = [v for v in result["runs"].values() if np.isfinite(v)]
      if finite:
        ax.set_ylim(min(finite) - 0.05, min(finite) + 1.5)
      ax.set_title(f"{opt}, {par}: optimum x{summary['factor_per_doubling']:.2f} per doubling",
                   fontsize=9)
      ax.set_xlabel("learning rate")
      ax.set_ylabel("final eval loss")
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="runs/lr_transfer")
  parser.add_argument("--widths", default="32,64,128,256")
  parser.add_argument("--optimizers", default="adamw,muon")
  parser.add_argument("--parametrizations", default="standard,mup")
  parser.add_argument("--lrs", type=int, default=9, help="learning rates per grid (>= 6)")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--init_std", type=float, default=None,
                      help="the models' init sigma (default: the config's 0.02); Hyperball's "
                           "radius is the initial norm, so it sets Hyperball's weight scale")
  args = parser.parse_args(argv)
  widths = sorted(int(w) for w in args.widths.split(","))
  optimizers = args.optimizers.split(",")
  parametrizations = args.parametrizations.split(",")
  unknown = [o for o in optimizers if o not in CENTRES]
  if unknown or len(widths) < 2 or args.lrs < 2:
    parser.error(f"--optimizers must be among {sorted(CENTRES)}, --widths two or more, "
                 f"--lrs >= 2 (got {unknown or ''} {widths} {args.lrs})")

  def lrs_of(opt):
    first = CENTRES[opt] - args.lrs // 2
    return [2.0 ** (first + i) for i in range(args.lrs)]

  from optbench_jax import train   # pylint: disable=import-outside-toplevel
  import jax   # pylint: disable=import-outside-toplevel
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "lr_transfer.json")
  settings = {"widths": widths, "steps": args.steps, "init_std": args.init_std,
              "lrs": {o: lrs_of(o) for o in optimizers},
              "optimizers": optimizers, "parametrizations": parametrizations}
  runs = {}
  if os.path.exists(path):
    previous = json.load(open(path))
    if previous.get("steps") == args.steps and previous.get("init_std") == args.init_std:
      runs = previous.get("runs", {})
  data_dir = os.path.join(args.out, "data")
  todo = [(o, p, w, lr) for o in optimizers for p in parametrizations for w in widths
          for lr in lrs_of(o) if run_key(o, p, w, lr) not in runs]
  start = time.time()
  for n, (opt, par, width, lr) in enumerate(todo, 1):
    config = run_config(data_dir, opt, par, width, widths[0], lr, args.steps, args.init_std)
    with tempfile.TemporaryDirectory() as workdir:
      summary = train.run(config, workdir, devices=jax.devices()[:1])
    if summary["status"] == "preempted":   # stopped by a signal: not a result; rerun resumes
      print(f"stopped before {run_key(opt, par, width, lr)}; rerun the command to resume")
      return 130
    loss = summary.get("final_eval_loss")
    if summary["status"] != "completed" or loss is None or not math.isfinite(loss):
      loss = math.inf       # diverged: a result (the rate is too high), plotted as missing
    runs[run_key(opt, par, width, lr)] = loss
    print(f"[{n}/{len(todo)} {time.time() - start:5.0f}s] {opt:6s} {par:9s} d={width:4d} "
          f"lr={lr:.3g}: {loss:.4f}", flush=True)
    with open(path, "w") as f:
      json.dump(dict(settings, runs=runs), f, indent=1)
  result = dict(settings, runs=runs,
                summary=summarise(runs, widths, optimizers, parametrizations, lrs_of))
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path} and {plot(result, os.path.join(args.out, 'lr_transfer.png'))}")
  print(f"{'optimizer/parametrization':28s} " + " ".join(f"{'d=' + str(w):>9s}" for w in widths)
        + "  optimum per doubling  transfer regret")
  for key, s in result["summary"].items():
    cells = " ".join(f"{s['optimum'][str(w)]:9.2e}{'' if s['interior'][str(w)] else '*'}"
                     for w in widths)
    print(f"{key:28s} {cells}  x{s['factor_per_doubling']:.2f}{'':16s}"
          f"{s['transfer_regret']:+.3f}")
  print("(* the optimum is on the grid's edge; transfer regret: the widest width's loss at the "
        "narrowest width's best rate minus its best)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
