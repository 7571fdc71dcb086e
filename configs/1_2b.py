"""Wen et al. (2025) 1.2b model: 32 x 1536, ffn 6144, 24 heads (settings in configs/wen2025.py)."""

from configs import wen2025


def get_config():
  return wen2025.wen2025_config(d_model=1536, ffn_dim=6144, num_heads=24)
