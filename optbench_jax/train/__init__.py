"""optbench_jax.train: the sharded trainer.

``build(config, devices) -> Run`` assembles a run (mesh, model, optimizer,
state shardings, steps) in one place; ``run(config, workdir) -> summary``
trains a config (``configs/base.py`` schema) in a work directory and resumes
from its latest checkpoint; ``dry_run(config)`` reports sizes without
allocating; ``check(config)`` is a sweep's pre-flight of one trial. One module
per job: ``config_checks`` (validation), ``mesh``, ``optimizer_args`` (the
trainer-owned optimizer arguments and the learning-rate rule), ``optimizer``
(registry + schedule + clipping), ``state`` (train state and shardings),
``step`` (jitted train / eval steps), ``assembly`` (``build``), ``checkpoint`` (orbax),
``metrics`` (clu, MFU, JSONL, plots), ``loop``.
"""

from optbench_jax.train.assembly import Run, build, check
from optbench_jax.train.config_checks import ConfigError
from optbench_jax.train.loop import dry_run, run
