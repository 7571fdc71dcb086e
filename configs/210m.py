"""Semenov et al. (2025) 210M Llama: 24 x 768, 12 heads, seq 512, batch 256."""

from configs import base


def get_config():
  c = base.base_config()
  c.model.update(num_layers=24, d_model=768, num_heads=12)
  c.data.update(source="shards", seq_len=512, global_batch_size=256)
  c.optimizer.hparams = dict(b1=0.8, b2=0.999)
  # Their OneCycleLR "cos": cosine-shaped warmup from lr/100, cosine decay to lr/100.
  c.optimizer.schedule.update(name="paper_cosine", warmup_steps=2000, final_fraction=0.01)
  c.train.update(steps=16000)
  return c
