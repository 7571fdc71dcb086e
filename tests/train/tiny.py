"""Small trainer configs for the tests (a few seconds per run on 2 CPU cores)."""

import jax

from configs import tiny


def micro_config(data_dir: str, **train):
  """A 1-layer d=32 Llama on a small synthetic corpus; eval and checkpoints off unless asked."""
  c = tiny.get_config()
  c.model.update(num_layers=1, d_model=32, num_heads=2, ffn_dim=64, vocab_size=128)
  c.data.update(path=str(data_dir), seq_len=16, global_batch_size=16,
                synthetic_vocab_size=128, synthetic_branching=4,
                synthetic_train_tokens=40_000, synthetic_val_tokens=2_000, prefetch_threads=0)
  c.optimizer.schedule.update(name="cosine", warmup_steps=2)
  c.train.update(steps=4, log_every=1, eval_every=0, eval_batches=1, full_eval_at_end=False,
                 checkpoint_every=0)
  c.train.update(**train)
  c.mesh.update(data=1, fsdp=1, tensor=1, expert=1)
  return c


def one_device():
  return jax.devices()[:1]


def spy_on_factory(monkeypatch, name: str) -> dict:
  """The keyword arguments the trainer passes to optimizer ``name``'s factory, once built."""
  import functools  # pylint: disable=import-outside-toplevel
  from optbench_jax.optim import registry  # pylint: disable=import-outside-toplevel
  real, original, seen = registry.factory(name), registry.factory, {}

  @functools.wraps(real)
  def spy(**kwargs):
    seen.update(kwargs)
    return real(**kwargs)

  monkeypatch.setattr(registry, "factory", lambda n: spy if n == name else original(n))
  return seen

