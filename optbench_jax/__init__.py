"""optbench_jax: optimizers, a sharded Llama/MoE trainer and a fair benchmark harness in JAX."""
