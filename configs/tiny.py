"""The embedded default: a 2-layer Llama on the built-in synthetic corpus, CPU, minutes."""

from configs import base


def get_config():
  c = base.base_config()
  c.model.update(num_layers=2, d_model=64, num_heads=4, ffn_dim=256, vocab_size=512,
                 compute_dtype="float32")
  c.data.update(source="synthetic", seq_len=64, global_batch_size=32,
                synthetic_vocab_size=512, synthetic_train_tokens=2_000_000,
                synthetic_val_tokens=100_000)
  c.optimizer.update(name="adamw", learning_rate=3e-3, weight_decay=0.1, grad_clip=1.0)
  c.optimizer.hparams = dict(b1=0.9, b2=0.99)
  c.optimizer.schedule.update(name="cosine", warmup_steps=50, final_fraction=0.1)
  c.train.update(steps=600, log_every=25, eval_every=200, eval_batches=8, checkpoint_every=200)
  return c
