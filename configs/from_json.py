"""A resolved config serialised as JSON (what the sweep harness writes).

  python -m trainers.lm --config=configs/from_json.py:/abs/path/config.json

The JSON is overlaid on the schema's defaults (``optbench_jax.config.load_json``);
keys the schema does not know are rejected there, naming the key.
"""

import ml_collections

from optbench_jax import config


def get_config(path: str) -> ml_collections.ConfigDict:
  if not path:
    raise ValueError("usage: --config=configs/from_json.py:/path/to/config.json")
  return config.load_json(path)
