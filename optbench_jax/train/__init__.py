"""optbench_jax.train: the sharded trainer.

``build(config, devices) -> Run`` assembles a run (mesh, model, optimizer,
state shardings, steps) in one place; ``run(config, workdir) -> summary``
trains a config (``optbench_jax.config`` schema) in a work directory and resumes
from its latest checkpoint; ``dry_run(config)`` reports sizes without
allocating; ``check(config)`` is a sweep's pre-flight of one trial. One module
per job: ``mesh``, ``optimizer_args`` (the trainer's values for the optimizer
library's trainer-owned arguments), ``optimizer`` (the bound factory + clipping), ``state`` (train state and shardings),
``step`` (jitted train / eval steps), ``assembly`` (``build``), ``checkpoint`` (orbax),
``metrics`` (clu, MFU, JSONL, plots), ``loop``, ``dry_run``.
"""

from optbench_jax.config import ConfigError
from optbench_jax.train.assembly import Run, build, check
from optbench_jax.train.dry_run import dry_run
from optbench_jax.train.loop import outcome_line, run
