"""Wen et al. (2025) 520m model: 32 x 1024, ffn 4096, 16 heads (settings in configs/wen2025.py)."""

from configs import wen2025


def get_config():
  return wen2025.wen2025_config(d_model=1024, ffn_dim=4096, num_heads=16)
