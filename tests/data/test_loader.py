"""The grain train / eval iterators: windows, shuffling, host slices, resume, full eval, errors.

The corpora hold ``arange`` streams (vocab 65536), so every window's first
input token is its start position and the expected contents follow directly
from the documented window rule.
"""

import numpy as np
import orbax.checkpoint as ocp
import grain
import pytest

from optbench_jax.data import DataError, make_eval_iterator, make_train_iterator
from optbench_jax.data import num_eval_batches

S = 8   # seq_len in most tests


@pytest.fixture
def corpus(make_corpus):
  # 1601 train tokens -> 200 full windows; shards of odd sizes so windows straddle them.
  return make_corpus(np.arange(1601), np.arange(5000, 5123),
                     shard_sizes={"train": [700, 13, 888], "val": [50, 73]})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _window_starts(batch):
  return (batch["inputs"][:, 0] // S).tolist()


def test_batches_are_windows_of_the_stream(corpus):
  it = make_train_iterator(corpus, seq_len=S, global_batch_size=10, seed=0, process_index=0,
                           process_count=1)
  for batch in _take(it, 5):
    assert batch["inputs"].shape == (10, S) and batch["inputs"].dtype == np.int32
    assert batch["targets"].shape == (10, S) and batch["targets"].dtype == np.int32
    starts = batch["inputs"][:, :1]
    assert (starts % S == 0).all()
    np.testing.assert_array_equal(batch["inputs"], starts + np.arange(S))
    np.testing.assert_array_equal(batch["targets"], starts + 1 + np.arange(S))


def test_each_epoch_is_a_new_permutation_of_all_windows(corpus):
  it = make_train_iterator(corpus, seq_len=S, global_batch_size=10, seed=0, process_index=0,
                           process_count=1)
  epochs = [sum((_window_starts(b) for b in _take(it, 20)), []) for _ in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(200))   # (1601 - 1) // 8 windows, each once
  assert epochs[0] != epochs[1] != epochs[2]
  assert epochs[0] != list(range(200))


def test_deterministic_from_seed(corpus):
  def run(seed, threads):
    it = make_train_iterator(corpus, seq_len=S, global_batch_size=10, seed=seed,
                             process_index=0, process_count=1, prefetch_threads=threads)
    return np.stack([b["inputs"] for b in _take(it, 6)])
  np.testing.assert_array_equal(run(4, 2), run(4, 0))
  assert not np.array_equal(run(4, 2), run(5, 2))


@pytest.mark.parametrize("hosts", [2, 5])
def test_host_slices_are_disjoint_and_assemble_the_global_batch(corpus, hosts):
  single = make_train_iterator(corpus, seq_len=S, global_batch_size=10, seed=1, process_index=0,
                               process_count=1)
  per_host = [make_train_iterator(corpus, seq_len=S, global_batch_size=10, seed=1,
                                  process_index=h, process_count=hosts) for h in range(hosts)]
  for _ in range(25):   # crosses an epoch boundary
    global_batch = next(single)
    parts = [next(it) for it in per_host]
    assert all(p["inputs"].shape == (10 // hosts, S) for p in parts)
    for key in ("inputs", "targets"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), global_batch[key])
    starts = [set(_window_starts(p)) for p in parts]
    assert sum(len(s) for s in starts) == 10 and len(set().union(*starts)) == 10


def test_resume_through_orbax_and_grain_is_bit_exact(corpus, tmp_path):
  settings = dict(seq_len=S, global_batch_size=6, seed=2, process_index=0, process_count=1)
  reference = make_train_iterator(corpus, **settings)
  expected = _take(reference, 50)   # > one epoch (33 batches)

  interrupted = make_train_iterator(corpus, **settings)
  _take(interrupted, 31)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(31, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(interrupted)))
  manager.wait_until_finished()
  _take(interrupted, 3)   # progress after the save must not leak into the restore

  resumed = make_train_iterator(corpus, **settings)
  restored = ocp.CheckpointManager(tmp_path / "ckpt").restore(
      31, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert restored["data"] is resumed
  for want, got in zip(expected[31:], _take(resumed, 19)):
    np.testing.assert_array_equal(got["inputs"], want["inputs"])
    np.testing.assert_array_equal(got["targets"], want["targets"])


def test_state_round_trip_and_changed_settings(corpus):
  it = make_train_iterator(corpus, seq_len=S, global_batch_size=4, seed=0, process_index=0,
                           process_count=1)
  _take(it, 7)
  state = it.get_state()
  following = next(it)
  other_hosts = make_train_iterator(corpus, seq_len=S, global_batch_size=4, seed=0,
                                    process_index=1, process_count=2)
  other_hosts.set_state(state)   # the host count may change: batches are global
  np.testing.assert_array_equal(next(other_hosts)["inputs"], following["inputs"][2:])
  other_seed = make_train_iterator(corpus, seq_len=S, global_batch_size=4, seed=1,
                                   process_index=0, process_count=1)
  with pytest.raises(DataError, match="settings changed: seed: saved 0, now 1"):
    other_seed.set_state(state)


def test_eval_covers_every_validation_token_once(corpus):
  batches = list(make_eval_iterator(corpus, seq_len=S, batch_size=4, process_index=0,
                                    process_count=1))
  # 123 val tokens -> 122 targets -> 16 windows (the last with 2 targets) -> 4 batches.
  assert len(batches) == 4 == num_eval_batches(corpus, seq_len=S, batch_size=4)
  mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
  targets = np.concatenate([b["targets"] for b in batches])[mask]
  inputs = np.concatenate([b["inputs"] for b in batches])[mask]
  np.testing.assert_array_equal(targets, np.arange(5001, 5123))
  np.testing.assert_array_equal(inputs, np.arange(5000, 5122))
  assert mask.sum() == 122 and mask[-1].sum() == 2 and mask[-1, :2].all()
  assert all(b["mask"].dtype == np.float32 and b["inputs"].shape == (4, S) for b in batches)
  again = list(make_eval_iterator(corpus, seq_len=S, batch_size=4, process_index=0,
                                  process_count=1))
  np.testing.assert_array_equal(np.stack([b["inputs"] for b in again]),
                                np.stack([b["inputs"] for b in batches]))


def test_eval_partial_batch_hosts_and_max_batches(corpus):
  # batch 6 over 3 hosts: 16 windows -> 3 batches, the last holding 4 real windows.
  parts = [list(make_eval_iterator(corpus, seq_len=S, batch_size=6, process_index=h,
                                   process_count=3)) for h in range(3)]
  assert [len(p) for p in parts] == [3, 3, 3]   # equal counts keep SPMD hosts in step
  seen = []
  for step in range(3):
    rows = np.concatenate([p[step]["targets"] for p in parts])
    mask = np.concatenate([p[step]["mask"] for p in parts]).astype(bool)
    seen.extend(rows[mask].tolist())
  assert seen == list(range(5001, 5123))
  assert parts[2][2]["mask"].sum() == 0   # host 2's share of the last batch is all padding
  limited = list(make_eval_iterator(corpus, seq_len=S, batch_size=4, process_index=0,
                                    process_count=1, max_batches=2))
  assert len(limited) == 2 == num_eval_batches(corpus, seq_len=S, batch_size=4, max_batches=2)
  short = list(make_eval_iterator(corpus, seq_len=500, batch_size=2, process_index=0,
                                  process_count=1))   # a val split shorter than seq_len
  assert len(short) == 1 and short[0]["mask"].sum() == 122


def test_bad_inputs(corpus, make_corpus, tmp_path):
  common = dict(seed=0, process_index=0)
  with pytest.raises(ValueError, match="global_batch_size=10 does not divide across "
                                       "process_count=3"):
    make_train_iterator(corpus, seq_len=S, global_batch_size=10, process_count=3, **common)
  with pytest.raises(ValueError, match="eval batch_size=5 does not divide"):
    make_eval_iterator(corpus, seq_len=S, batch_size=5, process_index=0, process_count=2)
  with pytest.raises(DataError, match="seq_len=1601 is larger than the train split"):
    make_train_iterator(corpus, seq_len=1601, global_batch_size=2, process_count=1, **common)
  with pytest.raises(DataError, match="missing.*does not exist"):
    make_train_iterator(tmp_path / "missing", seq_len=S, global_batch_size=2, process_count=1,
                        **common)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="is empty"):
    make_eval_iterator(tmp_path / "empty", seq_len=S, batch_size=2, process_index=0,
                       process_count=1)
  with open(corpus / "train_00001.bin", "ab") as f:
    f.write(b"\0\0")
  with pytest.raises(DataError, match="train_00001.bin has 28 bytes"):
    make_train_iterator(corpus, seq_len=S, global_batch_size=2, process_count=1, **common)
  tiny_val = make_corpus(np.arange(100), np.arange(1))
  with pytest.raises(DataError, match="validation split .* has 1 tokens"):
    make_eval_iterator(tiny_val, seq_len=S, batch_size=2, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="seed must be in"):
    make_train_iterator(tiny_val, seq_len=S, global_batch_size=2, seed=-1, process_index=0,
                        process_count=1)


def test_token_ids_beyond_vocab_are_caught_while_reading(make_corpus):
  tokens = np.arange(400) % 50
  tokens[333] = 77
  path = make_corpus(tokens, np.arange(20) % 50, shard_sizes={"train": [300, 100]},
                     vocab_size=50)
  it = make_train_iterator(path, seq_len=S, global_batch_size=49, seed=0, process_index=0,
                           process_count=1)   # one batch holds every window
  with pytest.raises(DataError, match="train_00001.bin holds token id 77 >= vocab_size 50"):
    next(it)


def test_synthetic_corpus_through_the_default_host_slot(tmp_path):
  from optbench_jax.data import synthetic
  m = synthetic.write_synthetic_corpus(tmp_path / "syn", 64, 4, seed=0, train_tokens=3000,
                                       val_tokens=300)
  batch = next(make_train_iterator(tmp_path / "syn", seq_len=16, global_batch_size=4, seed=0))
  assert batch["inputs"].shape == (4, 16)   # jax.process_count() == 1 here
  assert 0 <= batch["inputs"].min() and batch["targets"].max() < m.vocab_size
  total = sum(b["mask"].sum() for b in make_eval_iterator(tmp_path / "syn", seq_len=16,
                                                          batch_size=4))
  assert total == 299
