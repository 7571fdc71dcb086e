"""Wen et al. (2025) 300m model: 32 x 768, ffn 3072, 12 heads (settings in configs/wen2025.py)."""

from configs import wen2025


def get_config():
  return wen2025.wen2025_config(d_model=768, ffn_dim=3072, num_heads=12)
