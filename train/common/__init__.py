"""Shared training utilities for the ``train`` package.

Every recipe (FIMA/MoCo pretraining, downstream fine-tuning, linear probing,
retrieval) builds on the same small modules:

- :mod:`train.common.config` -- YAML configs with ``_base_`` inheritance and dotted ``key=value`` overrides (OmegaConf).
- :mod:`train.common.schema` -- the typed schemas (keys, types, ranges, defaults) of every config.
- :mod:`train.common.distributed` -- torchrun environment, rank information and collectives.
- :mod:`train.common.checkpoint` -- atomic saves, keep-last-K rotation, newest usable checkpoint discovery.
- :mod:`train.common.run_log` -- CSV + TensorBoard scalars, tqdm progress with ETA and clips/s, loss plots.
- :mod:`train.common.optim` -- SGD and per-step learning-rate schedules (cosine with warm-up, step).
- :mod:`train.common.loop` -- the training-loop core: optimizer steps (AMP, accumulation, non-finite stop), epochs, checkpoint cadence, resume state.
- :mod:`train.common.precision` -- autocast per device and the gradient scaler, on the library's precision vocabulary.
- :mod:`train.common.seed` -- global seeding, RNG state capture/restore, per-sample seeded augmentation.
- :mod:`train.common.sampling` -- a resumable, rank-aware batch sampler yielding ``(epoch, index)`` pairs.
"""
