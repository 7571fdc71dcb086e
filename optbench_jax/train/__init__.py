"""optbench_jax.train: the sharded trainer.

``run(config, workdir) -> summary`` trains a config (``configs/base.py`` schema)
in a work directory and resumes from its latest checkpoint; ``dry_run(config)``
reports sizes without allocating. One module per job: ``config_checks``
(validation), ``mesh``, ``optimizer`` (registry + schedule + clipping),
``state`` (train state and shardings), ``step`` (jitted train / eval steps),
``checkpoint`` (orbax), ``metrics`` (clu, MFU, JSONL, plots), ``loop``.
"""

from optbench_jax.train.config_checks import ConfigError
from optbench_jax.train.loop import dry_run, run
