"""train/run_record.py: keys added to the schema after a run started are no change at their defaults."""

from optbench_jax import config as config_lib
from optbench_jax.train import run_record


def test_a_record_without_a_newer_key_matches_the_key_at_its_default():
  new = config_lib.base_config().to_dict()
  old = config_lib.base_config().to_dict()
  del old["train"]["weight_averaging"]          # a record written before the key existed
  assert run_record.diff(old, new) == []
  new["train"]["weight_averaging"]["ema_decay"] = 0.99
  assert run_record.diff(old, new) == ['train.weight_averaging.ema_decay: "<absent>" -> 0.99']
  assert run_record.diff(new, old) != []        # a key dropped is still a change
