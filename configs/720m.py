"""Semenov et al. (2025) 720M Llama: 12 x 2048, 16 heads, seq 512, ~1M tokens per step."""

from configs import base


def get_config():
  c = base.base_config()
  c.model.update(num_layers=12, d_model=2048, num_heads=16, compute_dtype="bfloat16")
  c.data.update(source="shards", seq_len=512, global_batch_size=2048)
  c.optimizer.update(grad_clip=0.1)
  c.optimizer.hparams = dict(b1=0.8, b2=0.999)
  # Their OneCycleLR "cos": cosine-shaped warmup from lr/100, cosine decay to lr/100.
  c.optimizer.schedule.update(name="paper_cosine", warmup_steps=2000, final_fraction=0.01)
  c.train.update(steps=8000)
  c.mesh.update(data=1, fsdp=-1)
  return c
