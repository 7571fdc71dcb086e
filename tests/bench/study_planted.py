"""Synthetic study results from planted joint laws L(N, D) = E + A N^-a + B D^-b."""

import numpy as np

REFERENCE = {"E": 2.0, "A": 400.0, "a": 0.34, "B": 410.0, "b": 0.28}
BETTER = {**REFERENCE, "B": 300.0}          # same floor, fewer tokens for the same loss
LAWS = {"adamw": REFERENCE, "muon": BETTER}
SIZES = (1.3e8, 3e8, 5.2e8)
MULTIPLES = (1.0, 2.0, 4.0, 8.0)
NOISE = 0.002


def loss(law, params, tokens):
  return law["E"] + law["A"] * params ** -law["a"] + law["B"] * tokens ** -law["b"]


def true_speedup(law, params, tokens, reference=REFERENCE):
  """D_eff / D from the planted laws: the reference's tokens for ``law``'s loss at (N, D)."""
  excess = loss(law, params, tokens) - reference["E"] - reference["A"] * params ** -reference["a"]
  return (reference["B"] / excess) ** (1 / reference["b"]) / tokens


def rows(seeds=3, sizes=SIZES, multiples=MULTIPLES, noise=NOISE, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for name, law in LAWS.items():
    for n in sizes:
      for k in multiples:
        d = 20 * k * n
        for s in range(seeds):
          out.append({"optimizer": name, "model": f"{n / 1e6:.0f}M", "params": int(n),
                      "tokens": d, "chinchilla": k, "batch_size": None, "seed": s,
                      "final_loss": float(loss(law, n, d) + rng.normal(0, noise))})
  return out
