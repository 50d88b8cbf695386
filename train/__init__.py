"""Trainers on Ray Train + DeepSpeed, tracked in MLflow.

Shared machinery: :mod:`train.config` (typed options), :mod:`train.runner` (the driver),
:mod:`train.engine` (every rank's loop), :mod:`train.ema`, :mod:`train.data` (per-rank Lance
shards), :mod:`train.tracking` (MLflow on rank 0). Tasks: :mod:`train.vae` (triplane VAE) and
:mod:`train.dit` (image-conditioned DiT); the per-domain GAN and renderer trainers plug into the
same :class:`train.task.TrainTask` interface.
"""
