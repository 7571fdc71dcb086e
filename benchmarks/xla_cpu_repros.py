"""Minimal reproductions of the XLA:CPU behaviours that limit CPU throughput, with timings.

  python benchmarks/xla_cpu_repros.py [--retain] [--torch_python PY]

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
5. gemm: the matmuls of the 124M step (1024 tokens: projections forward
   x W, their weight gradients x^T dy, the head's dh = dlogits E) and one
   causal block of attention's batched scores [32, 64, 64] x [32, 64, 256]
   next to a 2-D matmul of the same FLOPs. ``--torch_python PY`` runs the
   same cases with torch (MKL) in another process and prints both columns:
   XLA:CPU's GEMMs were 10-45% slower on the medium 2-D shapes and about 2x
   slower batched, which bounds the 124M step (BUILD_NOTES.md).
6. rope: RoPE's cos/sin computed inside the jitted function, read by the four
   query-block slices of blocked attention, against the same tables as
   constants: XLA:CPU fuses the transcendental into every consumer loop and
   re-evaluates it per batch element and head (why ``attention.rope_tables``
   makes numpy constants).

Times are medians of 15 calls, in ms (the machine may be shared: compare the
rows of one run, not runs).
"""

from __future__ import annotations

import json
import pathlib
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
if "--retain" in sys.argv:
  from optbench_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.retain_freed_memory()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

# (label, batch, m, k, n, a_transposed): C = op(A) B with op(A) [batch?, m, k], B [batch?, k, n].
GEMM_CASES = (
    ("124M q/k/v/o  x W", 1, 1024, 768, 768, False),
    ("124M gate/up  x W", 1, 1024, 768, 2048, False),
    ("124M down     x W", 1, 1024, 2048, 768, False),
    ("124M q/k/v/o  dW = x^T dy", 1, 768, 1024, 768, True),
    ("124M gate/up  dW = x^T dy", 1, 768, 1024, 2048, True),
    ("124M head     dh = dlogits E", 1, 1024, 50304, 768, False),
    ("attention block scores (batched 32)", 32, 64, 64, 256, False),
    ("the same FLOPs as one 2-D matmul", 1, 2048, 64, 256, False),
)


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


def gemm_operands(batch, m, k, n, a_transposed, reps, seed=0):
  """``reps`` distinct A (stored [k, m] when transposed) and one B, float32, batch-leading if
  batch > 1."""
  rng = np.random.default_rng(seed)
  lead = (batch,) if batch > 1 else ()
  a_list = [jnp.asarray(rng.standard_normal(lead + ((k, m) if a_transposed else (m, k)),
                                            dtype=np.float32)) for _ in range(reps)]
  return a_list, jnp.asarray(rng.standard_normal(lead + (k, n), dtype=np.float32))


def gemm_reps(batch, m, k, n) -> int:
  """Matmuls per timed call: small cases repeat (distinct operands) so that the call overhead
  does not dominate; the same count on both sides."""
  return int(min(16, max(1, 2e9 // (2 * batch * m * k * n))))


def xla_gemm_ms(batch, m, k, n, a_transposed) -> float:
  """Median ms per matmul of one case, ``gemm_reps`` distinct ones per jitted call."""
  reps = gemm_reps(batch, m, k, n)
  a_list, b = gemm_operands(batch, m, k, n, a_transposed, reps)
  a_spec = "km" if a_transposed else "mk"
  spec = f"b{a_spec},bkn->bmn" if batch > 1 else f"{a_spec},kn->mn"
  return median_ms(lambda a_list, b: [jnp.einsum(spec, a, b) for a in a_list], a_list, b) / reps


def torch_gemm_ms(torch_python: str) -> list[float]:
  """The same GEMM_CASES timed by ``torch_peer.py --gemm`` in its own process."""
  peer = pathlib.Path(__file__).with_name("torch_peer.py")
  cases = json.dumps([list(c[1:]) + [gemm_reps(*c[1:5])] for c in GEMM_CASES])
  out = subprocess.run([torch_python, str(peer), "--gemm", cases], check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])["median_ms"]


def gemm_report(torch_python: str | None):
  xla = [xla_gemm_ms(*case[1:]) for case in GEMM_CASES]
  torch = torch_gemm_ms(torch_python) if torch_python else [None] * len(xla)
  print("5. gemm (median ms per matmul; GFLOP/s):")
  for (label, batch, m, k, n, _), ours, theirs in zip(GEMM_CASES, xla, torch):
    flops = 2.0 * batch * m * k * n
    line = f"   {label:36s} XLA {ours:7.2f} ms {flops / ours / 1e6:6.1f}"
    if theirs is not None:
      line += (f"  torch {theirs:7.2f} ms {flops / theirs / 1e6:6.1f}"
               f"  XLA/torch x{ours / theirs:.2f}")
    print(line)


def rope_report():
  from optbench_jax.models import attention  # pylint: disable=g-import-not-at-top
  q = jax.random.normal(jax.random.key(5), (8, 256, 4, 64))
  def blocks(positions):
    def fn(q):
      rotated = attention.apply_rope(q, positions).transpose(0, 2, 1, 3)
      return [rotated[:, :, :64 * (i + 1)] for i in range(4)]
    return fn
  traced = median_ms(lambda q, positions: blocks(positions)(q), q, jnp.arange(256))
  constant = median_ms(blocks(np.arange(256)), q)
  print(f"6. rope: RoPE + 4 block slices of q [8, 256, 4, 64], cos/sin in the jit: {traced:.2f} "
        f"ms; as constants: {constant:.2f} ms (x{traced / constant:.2f})")


def main():
  torch_python = None
  if "--torch_python" in sys.argv:
    torch_python = sys.argv[sys.argv.index("--torch_python") + 1]
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

  gemm_report(torch_python)
  rope_report()


if __name__ == "__main__":
  main()
