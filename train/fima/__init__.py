"""FIMA pretraining (Fine-grained Motion Alignment, ACM MM 2023) and its MoCo baseline.

- :mod:`train.fima.losses` -- InfoNCE losses, foreground mask and crop-box geometry.
- :mod:`train.fima.heads` -- projector P and motion decoder.
- :mod:`train.fima.momentum` -- EMA update, shuffled BatchNorm, key queues.
- :mod:`train.fima.model` -- :class:`~train.fima.model.FimaPretrainer` assembling FIMA or MoCo.
"""

from train.fima.model import DEFAULT_FIMA_CONFIG, METHODS, FimaPretrainer

__all__ = ["FimaPretrainer", "DEFAULT_FIMA_CONFIG", "METHODS"]
