"""Wen et al. (2025) 130m model: 32 x 512, ffn 2048, 8 heads (settings in configs/wen2025.py)."""

from configs import wen2025


def get_config():
  return wen2025.wen2025_config(d_model=512, ffn_dim=2048, num_heads=8)
