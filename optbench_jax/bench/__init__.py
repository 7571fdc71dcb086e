"""optbench_jax.bench: fair optimizer sweeps, tuning, speedup estimation and reports.

``trainers/sweep.py`` runs a sweep (:mod:`sweep`); ``python -m
optbench_jax.bench.report RUN_DIR`` writes its report (:mod:`report`).
"""
