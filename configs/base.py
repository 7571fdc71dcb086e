"""The trainer's full configuration schema, with defaults. Data only.

Every other config starts from ``base_config()`` and overrides fields; any key
not defined here is a typo and is rejected (ml_collections raises on unknown
keys in overrides; the trainer validates the rest before compiling).
Sentinels: 0 means "derive" (``ffn_dim``: the SwiGLU rule; ``num_kv_heads``:
``num_heads``; ``capacity_factor``: dropless), -1 means "fill" for mesh axes.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      kind="llama",            # llama | moe
      num_layers=12,
      d_model=768,
      num_heads=12,
      num_kv_heads=0,          # 0 = num_heads
      ffn_dim=0,               # 0 = next multiple of 256 above int(8 d / 3)
      vocab_size=50304,        # GPT-2 BPE (50257) padded to a multiple of 64
      tie_embeddings=True,
      rope_theta=10000.0,
      norm_eps=1e-5,
      init_std=0.02,           # residual output projections: init_std / sqrt(2 L)
      z_loss=0.0,              # output-logit z-loss coefficient
      # None = auto: unrolled on CPU, a scan on GPU/TPU (models.llama.scans_layers)
      scan_layers=ml_collections.config_dict.placeholder(bool),
      remat="none",            # none | full | dots
      # auto | xla | blocked | cudnn | splash (auto: cuDNN on GPU, splash on TPU, blocked on CPU)
      attention_impl="auto",
      compute_dtype="float32", # bfloat16 on GPU/TPU
      param_dtype="float32",
      num_experts=0,           # >= 2 for kind=moe (checked by models.ModelSpec)
      experts_top_k=2,
      capacity_factor=0.0,     # 0 = dropless (ragged_dot); > 0 = capacity-factor path
      moe_aux_loss_coef=0.1,   # Switch load balance, divided by num_layers
      moe_z_loss_coef=0.01,    # router z-loss, divided by num_layers
  ))

  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",      # synthetic | shards
      path="",                 # token-shard directory (source=shards); "" = <workdir>/data for synthetic
      seq_len=512,
      global_batch_size=256,   # sequences per optimizer step, across all hosts
      grad_accum_steps=1,      # micro-batches per step
      shuffle_seed=0,
      prefetch_threads=2,
      # synthetic corpus (see optbench_jax.data.synthetic)
      synthetic_vocab_size=512,
      synthetic_branching=8,
      synthetic_seed=1234,
      synthetic_train_tokens=4_000_000,
      synthetic_val_tokens=200_000,
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",            # any of optbench_jax.optim.names()
      learning_rate=1e-3,
      weight_decay=0.1,
      grad_clip=0.5,           # global-norm clipping; 0 disables
      decay_embeddings=False,
      qk_clip_tau=0.0,         # QK-clip (Kimi K2's MuonClip) threshold, any optimizer; 0 = off
      hparams=ml_collections.ConfigDict(),  # extra optimizer kwargs (b1, b2, ...)
      schedule=ml_collections.ConfigDict(dict(
          name="cosine",       # constant | linear | cosine | paper_cosine | wsd
          warmup_steps=2000,
          final_fraction=0.1,
          decay_fraction=0.2,  # wsd only
          decay_shape="linear",  # wsd only
      )),
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=16000,
      log_every=50,
      eval_every=1000,
      eval_batches=16,
      full_eval_at_end=True,
      checkpoint_every=1000,
      keep_checkpoints=2,
      profile=False,
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                 # -1 = fill with the remaining devices
      fsdp=1,
      tensor=1,
      expert=1,
      # Optimizer state of another shape than its parameter (SOAP/Kron factors):
      # "matched" | "full" (least memory) | "replicated" (least traffic); train/state.py.
      factor_sharding="matched",
  ))
  return c
