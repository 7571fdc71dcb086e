"""The synthetic Markov language: its floor formula, the generator, and the corpus writer."""

import numpy as np
import pytest

from optbench_jax.data import DataError, read_manifest, synthetic
from tests.data.conftest import write_corpus


def _reference_chain(language):
  """Dense P and pi from the chain's parameters, with an eigen-solver (independent of the module)."""
  v, eps = language.vocab_size, language.uniform_mix
  p = np.full((v, v), eps / v)
  for i in range(v):
    for j, q in zip(language.successors[i], language.probs[i]):
      p[i, j] += (1 - eps) * q
  values, vectors = np.linalg.eig(p.T)
  pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
  return p, pi / pi.sum()


@pytest.mark.parametrize("vocab, branching, eps, conc", [(32, 4, 0.01, 1.0), (50, 1, 0.2, 1.0),
                                                         (40, 40, 0.05, 0.3)])
def test_entropy_rate_matches_the_formula(vocab, branching, eps, conc):
  language = synthetic.markov_language(vocab, branching, seed=7, uniform_mix=eps,
                                       concentration=conc)
  assert all(len(set(row)) == branching for row in language.successors.tolist())
  p, pi = _reference_chain(language)
  np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
  assert (p > 0).all()   # ergodic and aperiodic
  np.testing.assert_allclose(language.transition_probs(), p, atol=1e-15)
  np.testing.assert_allclose(language.stationary_distribution(), pi, atol=1e-12)
  reference_rate = -(pi[:, None] * p * np.log(p)).sum()
  np.testing.assert_allclose(language.entropy_rate(), reference_rate, rtol=1e-12)


def test_generated_text_reaches_the_floor_and_no_better():
  language = synthetic.markov_language(32, 4, seed=3)
  rng = np.random.default_rng(11)
  tokens = np.concatenate(list(language.sample(400_000, rng)))
  p, pi = _reference_chain(language)
  # Cross-entropy of the optimal predictor P(. | previous) on the generated data.
  nll = -np.log(p[tokens[:-1], tokens[1:]])
  blocks = nll[: len(nll) // 100 * 100].reshape(100, -1).mean(axis=1)   # batch means: correlation-robust
  stderr = blocks.std(ddof=1) / np.sqrt(len(blocks))
  floor = language.entropy_rate()
  assert stderr < 0.005
  assert abs(nll.mean() - floor) < 4 * stderr
  # The plug-in conditional entropy of the data agrees too (bias ~ cells / 2N, a few 1e-3 nats).
  counts = np.zeros((32, 32))
  np.add.at(counts, (tokens[:-1], tokens[1:]), 1)
  empirical = counts / counts.sum(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    plug_in = -np.nansum(counts / counts.sum() * np.log(empirical))
  assert abs(plug_in - floor) < 0.01
  # Unigram frequencies follow pi (stationary from the first token on).
  np.testing.assert_allclose(np.bincount(tokens, minlength=32) / tokens.size, pi, atol=0.004)


def test_deterministic_from_seed():
  a = synthetic.markov_language(64, 8, seed=5)
  b = synthetic.markov_language(64, 8, seed=5)
  c = synthetic.markov_language(64, 8, seed=6)
  np.testing.assert_array_equal(a.successors, b.successors)
  np.testing.assert_array_equal(a.probs, b.probs)
  assert not np.array_equal(a.successors, c.successors)
  draw = lambda lang: np.concatenate(list(lang.sample(1000, np.random.default_rng(0))))
  np.testing.assert_array_equal(draw(a), draw(b))


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=70000), "vocab_size"), (dict(branching=0), "branching"),
    (dict(branching=65), "branching"), (dict(uniform_mix=0.0), "uniform_mix"),
    (dict(concentration=-1.0), "concentration"), (dict(seed=-1), "seed")])
def test_bad_settings(kwargs, message):
  settings = dict(vocab_size=64, branching=8, seed=0) | kwargs
  with pytest.raises(ValueError, match=message):
    synthetic.markov_language(**settings)


def test_write_synthetic_corpus_is_idempotent(tmp_path):
  out = tmp_path / "synthetic"
  m = synthetic.write_synthetic_corpus(out, 64, 4, seed=1, train_tokens=5000, val_tokens=700,
                                       shard_tokens=2048)
  assert m.tokenizer == "synthetic-markov" and m.eot_id is None and m.vocab_size == 64
  assert m.num_tokens("train") == 5000 and m.num_tokens("val") == 700
  assert [s.num_tokens for s in m.split_shards("train")] == [2048, 2048, 904]
  assert m.loss_floor_nats == pytest.approx(synthetic.markov_language(64, 4, 1).entropy_rate())
  assert read_manifest(out, verify="full").loss_floor_nats == m.loss_floor_nats
  stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  again = synthetic.write_synthetic_corpus(out, 64, 4, seed=1, train_tokens=5000, val_tokens=700)
  assert again.shards == m.shards
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps   # nothing rewritten

  changed = synthetic.write_synthetic_corpus(out, 64, 4, seed=2, train_tokens=3000, val_tokens=700)
  assert changed.shards != m.shards
  assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train_00000.bin",
                                                   "val_00000.bin"]   # stale shards removed
  (out / "val_00000.bin").write_bytes(b"")   # damaged: regenerated, not reused
  repaired = synthetic.write_synthetic_corpus(out, 64, 4, seed=2, train_tokens=3000,
                                              val_tokens=700)
  assert repaired.shards == changed.shards


def test_refuses_to_overwrite_a_real_corpus(tmp_path):
  write_corpus(tmp_path / "fineweb", np.arange(10), np.arange(10))
  with pytest.raises(DataError, match="holds a 'test' corpus"):
    synthetic.write_synthetic_corpus(tmp_path / "fineweb", 64, 4, 0, 1000, 100)
