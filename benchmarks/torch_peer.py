"""A plain PyTorch CPU peer of our Llama train step, for throughput comparisons only.

The same block as ``optbench_jax.models.llama`` at float32: token embedding, L
pre-norm blocks ``x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))`` with
rotate-half RoPE and causal ``scaled_dot_product_attention``, a final RMSNorm
and the tied LM head (logits = h E^T), mean token cross-entropy, global-norm
gradient clipping (our trainer's default ``grad_clip=0.5``) and
``torch.optim.AdamW``. No biases, no dropout; init N(0, 0.02^2) (the step time
does not depend on it). It is what a PyTorch user would write, eagerly, with
no ``torch.compile`` (which needs a C++ toolchain at run time). glibc malloc
gets the same setting as our trainer (``optbench_jax.host_memory``; the
PyTorch step's largest blocks, the logits, are mmapped per step otherwise);
``--default_malloc`` leaves it alone.

Needs torch (the ``bench`` extra: ``pip install -e .[bench]``); it never runs
in the test suite. ``benchmarks/trainer_throughput.py --peer`` runs it in its
own process, alternated with ours, and reads the JSON line it prints:

    python benchmarks/torch_peer.py --layers 4 --d_model 256 --heads 4 \
        --seq_len 256 --batch 8 --vocab 8192 --steps 6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from optbench_jax import host_memory  # pylint: disable=wrong-import-position  (no jax import)

import torch
import torch.nn.functional as F
from torch import nn


def ffn_hidden_dim(d_model: int) -> int:
  """Our SwiGLU rule (``models.layers.ffn_hidden_dim``): int(8 d / 3) up to a multiple of 256."""
  return int(math.ceil(int(8 * d_model / 3) / 256) * 256)


class RMSNorm(nn.Module):

  def __init__(self, d: int, eps: float = 1e-5):
    super().__init__()
    self.scale = nn.Parameter(torch.ones(d))
    self.eps = eps

  def forward(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope_tables(seq_len: int, head_dim: int, theta: float = 10000.0):
  inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
  angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
  angles = torch.cat([angles, angles], dim=-1)          # [S, hd]
  return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
  """x [B, H, S, hd]: x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1)."""
  x1, x2 = x.chunk(2, dim=-1)
  return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):

  def __init__(self, d: int, heads: int, ffn: int):
    super().__init__()
    self.heads = heads
    self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
    self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
    self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
    self.down = nn.Linear(ffn, d, bias=False)

  def forward(self, x, cos, sin):
    b, s, d = x.shape
    h = self.attn_norm(x)
    split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)
    q = apply_rope(split(self.q(h)), cos, sin)
    k = apply_rope(split(self.k(h)), cos, sin)
    attn = F.scaled_dot_product_attention(q, k, split(self.v(h)), is_causal=True)
    x = x + self.o(attn.transpose(1, 2).reshape(b, s, d))
    h = self.mlp_norm(x)
    return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):

  def __init__(self, layers: int, d: int, heads: int, vocab: int, seq_len: int):
    super().__init__()
    self.embed = nn.Embedding(vocab, d)
    self.blocks = nn.ModuleList(Block(d, heads, ffn_hidden_dim(d)) for _ in range(layers))
    self.final_norm = RMSNorm(d)
    cos, sin = rope_tables(seq_len, d // heads)
    self.register_buffer("cos", cos, persistent=False)
    self.register_buffer("sin", sin, persistent=False)
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.normal_(p, std=0.02)

  def forward(self, tokens):
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, self.cos, self.sin)
    return self.final_norm(x) @ self.embed.weight.T   # tied head


def median_ms(fn, calls: int, warmup: int = 2) -> float:
  """Median ms of ``calls`` calls of ``fn()`` after ``warmup`` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * sorted(times)[len(times) // 2]


def time_attention(args) -> dict:
  """Median ms of causal SDPA forward + backward on one layer's q, k, v."""
  shape = (args.batch, args.heads, args.seq_len, args.d_model // args.heads)
  q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
  cotangent = torch.randn(shape)
  fwd_bwd = lambda: (F.scaled_dot_product_attention(q, k, v, is_causal=True)
                     * cotangent).sum().backward()
  return dict(side="torch", what="sdpa fwd+bwd", shape=shape,
              median_ms=median_ms(fwd_bwd, 3 * args.steps))


def time_gemm(cases: list) -> dict:
  """Median ms per matmul of each [batch, m, k, n, a_transposed, reps] case
  (xla_cpu_repros.GEMM_CASES; ``reps`` distinct matmuls per timed call)."""
  medians = []
  for batch, m, k, n, a_transposed, reps in cases:
    lead = (batch,) if batch > 1 else ()
    a_list = [torch.randn(lead + ((k, m) if a_transposed else (m, k))) for _ in range(reps)]
    a_list = [a.transpose(-1, -2) for a in a_list] if a_transposed else a_list
    b = torch.randn(lead + (k, n))
    medians.append(median_ms(lambda: [torch.matmul(a, b) for a in a_list], 15) / reps)
  return dict(side="torch", what="gemm", median_ms=medians)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warmup)")
  parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
  parser.add_argument("--attention", action="store_true",
                      help="time only causal SDPA fwd+bwd of one layer [batch, heads, seq, "
                           "d_model/heads] (xla_cpu_repros.py's item 4)")
  parser.add_argument("--gemm", default="",
                      help="time only these matmuls: a JSON list of "
                           "[batch, m, k, n, a_transposed, reps] "
                           "(xla_cpu_repros.py's item 5)")
  parser.add_argument("--default_malloc", action="store_true",
                      help="leave glibc malloc as it is (default: the trainer's setting)")
  args = parser.parse_args()
  retained = False if args.default_malloc else host_memory.retain_freed_memory()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  if args.attention:
    print(json.dumps(time_attention(args)))
    return
  if args.gemm:
    print(json.dumps(time_gemm(json.loads(args.gemm))))
    return
  model = Llama(args.layers, args.d_model, args.heads, args.vocab, args.seq_len)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
  gen = torch.Generator().manual_seed(0)
  batches = [torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen)
             for _ in range(2 + args.steps)]

  def step(tokens):
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
    return loss.item()

  for tokens in batches[:2]:
    step(tokens)
  times = []
  for tokens in batches[2:]:
    start = time.perf_counter()
    step(tokens)
    times.append(time.perf_counter() - start)
  total = sum(times)
  blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
  print(json.dumps(dict(side="torch", torch=torch.__version__, threads=torch.get_num_threads(),
                        blas=blas.group(1) if blas else "unknown",
                        cpus=os.cpu_count(), retain_host_memory=retained, step_times_s=times,
                        tokens_per_s=args.steps * args.batch * args.seq_len / total)))


if __name__ == "__main__":
  main()
