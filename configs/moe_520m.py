"""Semenov et al. (2025) MoE-520M: the 124M Llama with 8 SwiGLU experts, top-2 (~180M active)."""

from configs import base


def get_config():
  c = base.base_config()
  c.model.update(kind="moe", num_layers=12, d_model=768, num_heads=12, num_experts=8,
                 experts_top_k=2, moe_aux_loss_coef=0.1, moe_z_loss_coef=0.01)
  c.data.update(source="shards", seq_len=512, global_batch_size=256)
  c.optimizer.hparams = dict(b1=0.8, b2=0.999)
  # Their OneCycleLR "cos": cosine-shaped warmup from lr/100, cosine decay to lr/100.
  c.optimizer.schedule.update(name="paper_cosine", warmup_steps=2000, final_fraction=0.01)
  c.train.update(steps=16000)
  return c
