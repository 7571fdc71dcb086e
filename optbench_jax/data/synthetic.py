"""A built-in synthetic language with a known entropy rate (no download, runs anywhere).

The language is a sparse random first-order Markov chain over ``V`` tokens,
generated deterministically from a seed. Each token ``i`` has ``branching``
distinct successors ``S_i`` (uniform without replacement) with probabilities
``q_i ~ Dirichlet(concentration)``; a small uniform component ``eps`` is mixed
in so that every transition has positive probability::

  P(j | i) = (1 - eps) * q_ij * [j in S_i] + eps / V.

With ``eps > 0`` every entry of ``P`` is positive, so the chain is irreducible
and aperiodic (ergodic) and has a unique stationary distribution ``pi``
(``pi P = pi``), computed here by power iteration, which converges at least as
fast as ``(1 - eps)^k``. Token streams start from a draw of ``pi``, so every
position is stationary.

Loss floor. For a stationary ergodic Markov chain the entropy rate is::

  H = sum_i pi_i H(P(. | i)),
  H(P(. | i)) = -sum_{j in S_i} p_ij log p_ij - (V - b) (eps / V) log(eps / V),
  p_ij = (1 - eps) q_ij + eps / V,

in nats. Because the chain is first-order, the best possible next-token
predictor (given any amount of context) is ``P(. | previous token)``, and its
expected cross-entropy at every position of a window is exactly ``H``: no model
can reach a mean validation loss below ``H`` (up to sampling noise of the
finite validation split). ``write_synthetic_corpus`` stores ``H`` as the
manifest's ``loss_floor_nats``.

Generation is sequential in pure Python (about 0.5 us per token), so the
default 4M-token corpus takes a couple of seconds; it is written once and
reused (``write_synthetic_corpus`` is idempotent).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import pathlib
import re

import numpy as np

from optbench_jax.data import manifest as manifest_lib

TOKENIZER_NAME = "synthetic-markov"
GENERATOR_VERSION = 1
_CHUNK = 1 << 20   # tokens generated (and held in memory) at a time


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovLanguage:
  """The chain: ``successors[i]`` (b distinct ids) with probabilities ``probs[i]`` (sum 1)."""
  vocab_size: int
  branching: int
  uniform_mix: float
  successors: np.ndarray   # int64 [V, b]
  probs: np.ndarray        # float64 [V, b], the Dirichlet part q_i

  def transition_probs(self) -> np.ndarray:
    """The dense mixed transition matrix ``P`` [V, V] (for small V: tests, analysis)."""
    v, eps = self.vocab_size, self.uniform_mix
    dense = np.full((v, v), eps / v)
    np.add.at(dense, (np.arange(v)[:, None], self.successors), (1.0 - eps) * self.probs)
    return dense

  def stationary_distribution(self, tol: float = 1e-15, max_iters: int = 1_000_000) -> np.ndarray:
    """``pi`` with ``pi P = pi``, by power iteration on the sparse form of ``P``."""
    v, eps = self.vocab_size, self.uniform_mix
    pi = np.full(v, 1.0 / v)
    cols = self.successors.ravel()
    for _ in range(max_iters):
      flow = np.bincount(cols, weights=(pi[:, None] * self.probs).ravel(), minlength=v)
      new = (1.0 - eps) * flow + eps / v   # sum(pi) = 1, so the uniform part adds eps / V
      new /= new.sum()
      if np.abs(new - pi).sum() < tol:
        return new
      pi = new
    raise RuntimeError("power iteration for the stationary distribution did not converge")

  def row_entropies(self) -> np.ndarray:
    """``H(P(. | i))`` in nats for every token i (successors and the uniform floor)."""
    v, eps = self.vocab_size, self.uniform_mix
    p = (1.0 - eps) * self.probs + eps / v
    entropy = -(p * np.log(p)).sum(axis=1)
    if eps > 0:
      entropy -= (v - self.branching) * (eps / v) * np.log(eps / v)
    return entropy

  def entropy_rate(self) -> float:
    """``sum_i pi_i H(P(. | i))`` in nats: the best achievable mean cross-entropy."""
    return float(self.stationary_distribution() @ self.row_entropies())

  def sample(self, num_tokens: int, rng: np.random.Generator, start: int | None = None):
    """Yields the stream in numpy chunks (int64), starting from ``pi`` unless ``start`` is given."""
    v, eps = self.vocab_size, self.uniform_mix
    succ = self.successors.tolist()
    cum = np.cumsum(self.probs, axis=1)
    cum[:, -1] = 2.0   # rounding must never push a draw past the last successor
    cum = cum.tolist()
    if start is None:
      cdf = np.cumsum(self.stationary_distribution())
      start = min(int(np.searchsorted(cdf, rng.random(), side="right")), v - 1)
    x = int(start)
    uniform_scale = v / eps if eps > 0 else 0.0
    rest_scale = 1.0 / (1.0 - eps)
    emitted = 0
    first = True
    while emitted < num_tokens:
      n = min(_CHUNK, num_tokens - emitted)
      draws = rng.random(n).tolist()
      out = []
      append = out.append
      for u in draws:
        if first:   # the first token is the stationary draw itself
          first = False
        elif u < eps:   # one uniform decides both the branch and the token
          x = min(int(u * uniform_scale), v - 1)
        else:
          row = cum[x]
          x = succ[x][bisect.bisect_right(row, (u - eps) * rest_scale)]
        append(x)
      emitted += n
      yield np.asarray(out, dtype=np.int64)


def markov_language(vocab_size: int, branching: int, seed: int, *, uniform_mix: float = 0.01,
                    concentration: float = 1.0) -> MarkovLanguage:
  """Builds the chain deterministically from ``seed`` (see the module docstring).

  Args:
    vocab_size: ``V``, 2..65536 (token files are uint16).
    branching: ``b``, successors per token, 1..V.
    seed: any non-negative int; the same seed gives the same language everywhere.
    uniform_mix: ``eps`` in (0, 1]; makes the chain ergodic.
    concentration: Dirichlet parameter of the successor probabilities (1 = uniform
      on the simplex; smaller = peakier rows, lower entropy).
  """
  if not 2 <= vocab_size <= 65536:
    raise ValueError(f"synthetic vocab_size must be in [2, 65536], got {vocab_size}")
  if not 1 <= branching <= vocab_size:
    raise ValueError(f"synthetic branching must be in [1, vocab_size={vocab_size}], got {branching}")
  if not 0.0 < uniform_mix <= 1.0:
    raise ValueError(f"synthetic uniform_mix must be in (0, 1] for an ergodic chain, got {uniform_mix}")
  if not concentration > 0:
    raise ValueError(f"synthetic concentration must be > 0, got {concentration}")
  if seed < 0:
    raise ValueError(f"synthetic seed must be >= 0, got {seed}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
  successors = np.stack([rng.choice(vocab_size, size=branching, replace=False)
                         for _ in range(vocab_size)]).astype(np.int64)
  probs = rng.dirichlet(np.full(branching, float(concentration)), size=vocab_size)
  return MarkovLanguage(vocab_size=vocab_size, branching=branching, uniform_mix=float(uniform_mix),
                        successors=successors, probs=probs)


_SHARD_FILE = re.compile(r"^(train|val)_\d{5}\.bin$")


def write_synthetic_corpus(out_dir: str | os.PathLike, vocab_size: int, branching: int, seed: int,
                           train_tokens: int, val_tokens: int, *, uniform_mix: float = 0.01,
                           concentration: float = 1.0,
                           shard_tokens: int = 1 << 24) -> manifest_lib.Manifest:
  """Writes the synthetic language as a token-shard directory and returns its manifest.

  Same format as a prepared FineWeb directory (``optbench_jax.data.manifest``),
  with ``tokenizer="synthetic-markov"``, ``eot_id=None`` (one endless document)
  and ``loss_floor_nats`` = the entropy rate. Train and val are independent
  streams of the same language, each starting from the stationary distribution.

  Idempotent: when ``out_dir`` already holds a complete synthetic corpus with
  the same parameters it is reused (returned without regenerating); a synthetic
  corpus with other parameters is replaced; a directory holding anything else
  (e.g. a FineWeb manifest) raises ``DataError`` rather than being overwritten.
  """
  language = markov_language(vocab_size, branching, seed, uniform_mix=uniform_mix,
                             concentration=concentration)
  if train_tokens < 2 or val_tokens < 2:
    raise ValueError(f"train_tokens and val_tokens must be >= 2, got {train_tokens}, {val_tokens}")
  out_dir = pathlib.Path(out_dir)
  generator = dict(kind="markov", version=GENERATOR_VERSION, vocab_size=vocab_size,
                   branching=branching, seed=seed, uniform_mix=float(uniform_mix),
                   concentration=float(concentration), train_tokens=int(train_tokens),
                   val_tokens=int(val_tokens))
  if (out_dir / manifest_lib.MANIFEST_NAME).is_file():
    try:
      existing = manifest_lib.read_manifest(out_dir, verify="size")
    except manifest_lib.DataError:
      existing = None   # our own half-written or damaged corpus: regenerate below
    if existing is not None:
      if existing.tokenizer != TOKENIZER_NAME:
        raise manifest_lib.DataError(
            f"{out_dir} holds a {existing.tokenizer!r} corpus; refusing to overwrite it with "
            "the synthetic corpus (point data.path elsewhere)")
      if existing.metadata.get("generator") == generator:
        return existing
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / manifest_lib.MANIFEST_NAME).unlink(missing_ok=True)
  for stale in out_dir.iterdir():
    if _SHARD_FILE.match(stale.name):
      stale.unlink()

  streams = np.random.SeedSequence([seed, 1]).spawn(2)
  shards = []
  for split, count, stream in (("train", train_tokens, streams[0]), ("val", val_tokens, streams[1])):
    writer = manifest_lib.ShardWriter(out_dir, split, shard_tokens)
    for chunk in language.sample(count, np.random.default_rng(stream)):
      writer.write(chunk)
    shards.extend(writer.close())
  result = manifest_lib.Manifest(
      directory=out_dir, tokenizer=TOKENIZER_NAME, vocab_size=vocab_size, eot_id=None,
      shards=tuple(shards), loss_floor_nats=language.entropy_rate(),
      metadata=dict(generator=generator))
  manifest_lib.write_manifest(result)
  return result
