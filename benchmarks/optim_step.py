"""Times one jitted, donated optimizer step on a 124M-shaped float32 tree.

For every optimizer in ``optbench_jax.optim.names()`` whose module exists:
ms per step (median after warmup), optimizer-state bytes per parameter, and the
ratio of the step time to a memory-bandwidth bound measured in the same run:
(bytes read + written by the step) / (copy bandwidth of a jitted array copy).
The step is ``params, state = apply(update(grads, state, params))`` with params
and state donated, so it reads params, grads and state and writes params and
state: bytes = 2 |params| + |grads| + 2 |state|.

Where optax has the same optimizer, optax's version is timed side by side
(``--vs_inner``: C-AdamW / C-Lion against our AdamW / Lion instead),
interleaved run by run with ours (one after the other where both states
together would pass ~6 GB), and the ratio ours/optax is printed.

    python benchmarks/optim_step.py [--names adamw,lion] [--repeats 5]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from optbench_jax import host_memory  # pylint: disable=g-import-not-at-top

host_memory.retain_freed_memory()   # as the trainer does, before XLA starts its threads

import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import jax.numpy as jnp

import optax

import optbench_jax.optim as O

L, D, FFN, VOCAB, HEADS = 12, 768, 2048, 50304, 12
LR = 1e-3


def param_shapes() -> dict:
  """The 124M Llama tree of the shared contract (tied embeddings, stacked layers)."""
  attn = {n: {"kernel": (L, D, D)} for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
  mlp = {"gate_proj": {"kernel": (L, D, FFN)}, "up_proj": {"kernel": (L, D, FFN)},
         "down_proj": {"kernel": (L, FFN, D)}}
  return {"embed": {"embedding": (VOCAB, D)},
          "layers": {"attn_norm": {"scale": (L, D)}, "attn": attn,
                     "mlp_norm": {"scale": (L, D)}, "mlp": mlp},
          "final_norm": {"scale": (D,)}}


def batch_axes(path, leaf):
  del leaf
  return 1 if getattr(path[0], "key", None) == "layers" else 0


def make_tree(seed: int, scale: float = 0.02) -> dict:
  keys = iter(jax.random.split(jax.random.key(seed), 64))
  return jax.tree.map(lambda s: scale * jax.random.normal(next(keys), s, jnp.float32),
                      param_shapes(), is_leaf=lambda x: isinstance(x, tuple))


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def copy_bandwidth(repeats: int) -> float:
  """Bytes/s of a jitted, donated elementwise pass over a 0.5 GB array (read + write).

  Donated like the optimizer step, so it writes in place instead of faulting in
  fresh pages on every call.
  """
  x = jnp.ones((124_000_000,), jnp.float32)
  copy = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  x = copy(copy(x)).block_until_ready()
  times = []
  for _ in range(max(repeats, 5)):
    start = time.perf_counter()
    x = copy(x).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * x.size * 4 / statistics.median(times)


OUR_HPARAMS = {
    "mars": dict(batch_axes=batch_axes),
    "adam_mini": dict(batch_axes=batch_axes, num_heads=HEADS),
    "adopt": dict(weight_decay=0.0), "signum": dict(weight_decay=0.0),
    "dion": dict(rank_fraction=0.5),   # microsoft/dion configs/dion_160m.yaml
}

OPTAX_TWINS = {
    "adamw": lambda: optax.adamw(LR),
    "nadamw": lambda: optax.nadamw(LR),
    "lion": lambda: optax.lion(LR),
    "adopt": lambda: optax.contrib.adopt(LR),
    "ademamix": lambda: optax.contrib.ademamix(LR),
    "prodigy": lambda: optax.contrib.prodigy(LR),
    "schedule_free_adamw": lambda: optax.contrib.schedule_free_adamw(LR),
}
if hasattr(optax, "signum"):
  OPTAX_TWINS["signum"] = lambda: optax.signum(LR)

# --vs_inner: a wrapper is timed side by side with the optimizer it wraps (ours).
INNER = {"c_adamw": "adamw", "c_lion": "lion"}


def build_ours(name: str):
  kwargs = dict(learning_rate=LR, **OUR_HPARAMS.get(name, {}))
  valid = O.registry.hyperparameter_names(name)
  if "batch_axes" in valid:
    kwargs["batch_axes"] = batch_axes
  return O.create(name, **{k: v for k, v in kwargs.items() if k in valid})


class Runner:
  """One optimizer's jitted, donated step with its own params and state."""

  def __init__(self, tx, grads):
    self.grads = grads
    self.params = make_tree(0)
    # A private copy: some inits alias params (optax's prodigy keeps x_0 = params),
    # which donation would then free twice.
    self.state = jax.tree.map(jnp.copy, tx.init(self.params))
    self.state_bytes = tree_bytes(self.state)

    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    self.step = jax.jit(step, donate_argnums=(0, 1))

  def run(self) -> float:
    start = time.perf_counter()
    self.params, self.state = self.step(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))
    return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--names", default="", help="comma-separated subset of O.names()")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--vs_inner", action="store_true",
                      help="time c_adamw / c_lion against our adamw / lion instead of optax")
  args = parser.parse_args()
  twins = dict(OPTAX_TWINS)
  if args.vs_inner:
    twins.update({w: (lambda inner=inner: build_ours(inner)) for w, inner in INNER.items()})
  names = args.names.split(",") if args.names else O.names()

  bandwidth = copy_bandwidth(args.repeats)
  grads = make_tree(1, scale=1.0)
  n_params = sum(x.size for x in jax.tree.leaves(grads))
  print(f"{n_params / 1e6:.1f}M float32 parameters; copy bandwidth {bandwidth / 1e9:.2f} GB/s; "
        f"{jax.devices()[0].platform}, median of {args.repeats} after 2 warmup steps\n")
  twin = "optax (inner for c_adamw, c_lion)" if args.vs_inner else "optax"
  print(f"| optimizer | ms/step | state bytes/param | x bandwidth bound | {twin} ms/step "
        f"| ours/twin |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  notes = []
  for name in names:
    try:
      ours = Runner(build_ours(name), grads)
    except (ModuleNotFoundError, ImportError) as error:
      notes.append(f"{name}: skipped, module not importable yet ({error})")
      continue
    except Exception as error:  # pylint: disable=broad-except
      notes.append(f"{name}: skipped ({type(error).__name__}: {str(error)[:120]})")
      continue
    # Interleave ours and optax's run by run, unless holding both states would
    # pass ~6 GB (Prodigy keeps four full trees): then one after the other.
    interleave = ours.state_bytes < 14 * n_params
    twin = Runner(twins[name](), grads) if name in twins and interleave else None
    times = {"ours": [], "optax": []}
    try:
      for i in range(2 + args.repeats):  # ours, optax, ours, optax, ...
        for label, r in (("ours", ours), ("optax", twin)):
          if r is not None:
            elapsed = r.run()
            if i >= 2:
              times[label].append(elapsed)
      ours_params_bytes, ours_state_bytes = tree_bytes(ours.params), ours.state_bytes
      del ours
      if name in twins and not interleave:
        twin = Runner(twins[name](), grads)
        times["optax"] = [twin.run() for _ in range(2 + args.repeats)][2:]
    except Exception as error:  # pylint: disable=broad-except
      notes.append(f"{name}: step failed ({type(error).__name__}: {str(error)[:120]})")
      continue
    ms = 1e3 * statistics.median(times["ours"])
    moved = 2 * ours_params_bytes + tree_bytes(grads) + 2 * ours_state_bytes
    bound_ms = 1e3 * moved / bandwidth
    row = f"| {name} | {ms:.0f} | {ours_state_bytes / n_params:.2f} | {ms / bound_ms:.2f} |"
    if times["optax"]:
      twin_ms = 1e3 * statistics.median(times["optax"])
      order = "" if interleave else " (sequential)"
      row += f" {twin_ms:.0f} | {ms / twin_ms:.3f}{order} |"
    else:
      row += " - | - |"
    print(row, flush=True)
    twin = None
  for note in notes:
    print(f"\n- {note}")



if __name__ == "__main__":
  main()
