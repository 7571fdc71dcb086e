"""Run by ``test_multihost`` as N processes: checks that each host reads only its slice of every batch.

Every process builds the trainer's run (``train.build``) and its train iterator
exactly as ``train.loop`` does, forms the global batch with the loop's own
``_to_global``, and compares, for a few steps, against the full global batch
read by one process alone:
  * the host's local batch is rows [i B/P, (i+1) B/P) of the global batch;
  * every shard of the global array on this host's devices holds exactly the
    global batch's rows at that shard's index (nothing from another host);
  * the gathered global array equals the single-process batch.
Writes ``<out>/process_<i>.json`` with what it saw.
"""

import json
import os
import sys

from optbench_jax.train import mesh as mesh_lib

mesh_lib.maybe_initialize_distributed()

import jax  # pylint: disable=g-import-not-at-top
from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import tiny  # pylint: disable=g-import-not-at-top
from optbench_jax import data as data_lib  # pylint: disable=g-import-not-at-top
from optbench_jax import train  # pylint: disable=g-import-not-at-top
from optbench_jax.train import loop  # pylint: disable=g-import-not-at-top


def main(out: str, corpus: str, data_axis: int, fsdp_axis: int, tensor_axis: int) -> None:
  config = tiny.get_config()
  config.data.update(global_batch_size=16, seq_len=32)
  config.mesh.update(data=data_axis, fsdp=fsdp_axis, tensor=tensor_axis)
  run = train.build(config, jax.devices())
  d = config.data
  index, count = jax.process_index(), jax.process_count()
  host_iter = data_lib.make_train_iterator(corpus, seq_len=d.seq_len,
                                           global_batch_size=d.global_batch_size, seed=0,
                                           process_index=index, process_count=count)
  full_iter = data_lib.make_train_iterator(corpus, seq_len=d.seq_len,
                                           global_batch_size=d.global_batch_size, seed=0,
                                           process_index=0, process_count=1)
  rows = d.global_batch_size // count
  report = {"process": index, "processes": count, "steps": []}
  for _ in range(3):
    local, full = next(host_iter), next(full_iter)
    global_batch = loop._to_global(local, run.batch_sharding)  # pylint: disable=protected-access
    own = slice(index * rows, (index + 1) * rows)
    shards_ok = all(
        np.array_equal(np.asarray(shard.data), full["inputs"][shard.index])
        for shard in global_batch["inputs"].addressable_shards)
    gathered = multihost_utils.process_allgather(global_batch["inputs"], tiled=True)
    report["steps"].append(dict(
        local_rows=int(local["inputs"].shape[0]),
        local_is_own_slice=bool(np.array_equal(local["inputs"], full["inputs"][own])
                                and np.array_equal(local["targets"], full["targets"][own])),
        shards_hold_own_rows=bool(shards_ok),
        shard_rows=sorted({(s.index[0].start or 0) for s in
                           global_batch["inputs"].addressable_shards}),
        gathered_equals_full=bool(np.array_equal(np.asarray(gathered), full["inputs"]))))
  with open(os.path.join(out, f"process_{index}.json"), "w") as f:
    json.dump(report, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], *(int(v) for v in sys.argv[3:6]))
