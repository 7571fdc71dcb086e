"""Shared settings of Wen et al. (2025)'s Llama-2-style models (32 layers, seq 4096, untied).

Sizes in that study count non-embedding parameters. We tokenize with GPT-2 BPE
(vocab 50304) rather than their Llama-3 tokenizer; see BUILD_NOTES.md.
"""

from configs import base


def wen2025_config(d_model: int, ffn_dim: int, num_heads: int):
  c = base.base_config()
  c.model.update(num_layers=32, d_model=d_model, ffn_dim=ffn_dim, num_heads=num_heads,
                 tie_embeddings=False, compute_dtype="bfloat16")
  c.data.update(source="shards", seq_len=4096, global_batch_size=128)
  c.optimizer.update(name="adamw", learning_rate=4e-3, weight_decay=0.1, grad_clip=1.0)
  c.optimizer.hparams = dict(b1=0.9, b2=0.98)
  c.optimizer.schedule.update(name="wsd", warmup_steps=1000, decay_fraction=0.2,
                              decay_shape="linear", final_fraction=0.0)
  c.train.update(steps=10000)
  c.mesh.update(data=1, fsdp=-1)
  return c
