"""optbench_jax.data: tokenizer, corpus preparation, the synthetic corpus and the grain loader.

* ``gpt2_tokenizer()`` -- the GPT-2 BPE (tiktoken) from a packaged rank file, offline.
* ``read_manifest(path, verify=...)`` -- the token-shard directory format (``manifest``).
* ``python -m optbench_jax.data.prepare`` -- FineWeb / parquet / text -> token shards.
* ``synthetic.write_synthetic_corpus(...)`` -- a Markov language with a known loss floor.
* ``make_train_iterator`` / ``make_eval_iterator`` -- checkpointable grain iterators.
"""

from optbench_jax.data import manifest
from optbench_jax.data import synthetic
from optbench_jax.data import tokenizer
from optbench_jax.data.loader import make_eval_iterator, make_train_iterator, num_eval_batches
from optbench_jax.data.manifest import DataError, Manifest, read_manifest
from optbench_jax.data.synthetic import write_synthetic_corpus
from optbench_jax.data.tokenizer import gpt2_tokenizer
