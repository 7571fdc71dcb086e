"""Minimal reproductions of the XLA:CPU behaviours issue 12 found, with timings.

  python benchmarks/xla_cpu_repros.py [--retain]

1. transpose: the weight gradient of a projection of a 3-D activation
   [B, S, d] transposes its elementwise-fused operand in a loop that is 2-3x
   slower than the same computation on tokens [B*S, d] (why the model's
   blocks run on tokens, ``layers.token_axes``).
2. count: ``mean(u * g > 0)`` (the Cautious mask's fraction) stores the
   compare as a float32 array for a library reduce, where ``sum(u * g)``
   becomes a dot and ``u * g`` one elementwise pass: the floor under C-AdamW
   and C-Lion's extra cost.
3. faults: each execution's temporaries are a fresh ``mmap`` (glibc, thread
   arena) and so page-faulted in every call, unless
   ``optbench_jax.host_memory.retain_freed_memory()`` ran first (``--retain``;
   run both ways, a process can set it only before XLA starts).
4. attention: causal attention fwd+bwd of one layer of the small benchmark
   shape ([8, 256, 4, 64]) by ``jax.nn.dot_product_attention`` (the full
   masked [S, S] scores) and by the query blocks of ``attention_impl=
   'blocked'``. PyTorch's fused CPU kernel on the same shape:
   ``python benchmarks/torch_peer.py --attention`` (it was ~2x faster than
   the blocks: the rest of the CPU gap to the peer, BUILD_NOTES.md).

Times are medians of 15 calls, in ms (the machine may be shared: compare the
rows of one run, not runs).
"""

from __future__ import annotations

import pathlib
import resource
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
if "--retain" in sys.argv:
  from optbench_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.retain_freed_memory()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top


def median_ms(fn, *args, n: int = 15) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def faults_per_call(fn, *args, n: int = 5) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(n):
    jax.block_until_ready(fn(*args))
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def main():
  keys = iter(jax.random.split(jax.random.key(0), 12))
  # 1. SwiGLU-like projection backward, 3-D vs tokens.
  x = jax.random.normal(next(keys), (8, 256, 256))
  w_gate, w_up = (0.02 * jax.random.normal(next(keys), (256, 768)) for _ in range(2))
  w_down = 0.02 * jax.random.normal(next(keys), (768, 256))

  def mlp(x, wg, wu, wd):
    return jnp.sum((jax.nn.silu(x @ wg) * (x @ wu)) @ wd)

  grad = jax.grad(mlp, argnums=(1, 2, 3))
  t3 = median_ms(grad, x, w_gate, w_up, w_down)
  t2 = median_ms(grad, x.reshape(-1, 256), w_gate, w_up, w_down)
  print(f"1. transpose: MLP weight gradients, x [8, 256, 256]: {t3:.1f} ms; "
        f"x as tokens [2048, 256]: {t2:.1f} ms (x{t3 / t2:.2f})")

  # 2. Counting agreeing signs vs a plain reduction and an elementwise pass.
  u, g = (jax.random.normal(next(keys), (12, 768, 2048)) for _ in range(2))
  count = median_ms(lambda u, g: jnp.mean((u * g > 0).astype(jnp.float32)), u, g)
  dot = median_ms(lambda u, g: jnp.sum(u * g), u, g)
  elementwise = median_ms(lambda u, g: u * g, u, g)
  print(f"2. count: mean(u*g > 0) over 18.9M: {count:.1f} ms; sum(u*g): {dot:.1f} ms; "
        f"u*g: {elementwise:.1f} ms")

  # 3. Page faults of an execution's temporaries.
  faults = faults_per_call(lambda u, g: jnp.sum(jnp.sin(u) * g, axis=0), u, g)
  retained = "retained" if "--retain" in sys.argv else "default malloc"
  print(f"3. faults: sum(sin(u)*g, axis=0) (a 75 MB temporary), {retained}: "
        f"{faults:.0f} minor page faults per call")

  # 4. Causal attention fwd+bwd, full scores vs query blocks.
  from optbench_jax.models import blocked_attention  # pylint: disable=g-import-not-at-top
  q, k, v, do = (jax.random.normal(next(keys), (8, 256, 4, 64)) for _ in range(4))

  def fwd_bwd(attention):
    return jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v) * do), argnums=(0, 1, 2))

  full = median_ms(fwd_bwd(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)),
                   q, k, v)
  blocks = median_ms(fwd_bwd(blocked_attention.blocked_causal_attention), q, k, v)
  print(f"4. attention: causal fwd+bwd [8, 256, 4, 64], dot_product_attention: {full:.1f} ms; "
        f"4 query blocks: {blocks:.1f} ms (x{full / blocks:.2f})")


if __name__ == "__main__":
  main()
