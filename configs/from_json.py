"""A resolved config serialised as JSON (what the sweep harness writes).

  python -m trainers.lm --config=configs/from_json.py:/abs/path/config.json

The JSON is overlaid on ``configs/base.py``'s defaults; keys the schema does
not know are rejected by the trainer's config check (``optbench_jax.train``).
"""

import json

import ml_collections

from configs import base


def _overlay(target: dict, source: dict) -> None:
  for key, value in source.items():
    if isinstance(value, dict) and isinstance(target.get(key), dict) and key != "hparams":
      _overlay(target[key], value)
    else:
      target[key] = value


def get_config(path: str) -> ml_collections.ConfigDict:
  if not path:
    raise ValueError("usage: --config=configs/from_json.py:/path/to/config.json")
  with open(path) as f:
    loaded = json.load(f)
  merged = base.base_config().to_dict()
  _overlay(merged, loaded)
  return ml_collections.ConfigDict(merged)
