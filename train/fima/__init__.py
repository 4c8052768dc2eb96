"""FIMA pretraining (Fine-grained Motion Alignment, ACM MM 2023) and its MoCo baseline.

- :mod:`train.fima.losses` -- InfoNCE losses, foreground mask and crop-box geometry.
- :mod:`train.fima.heads` -- projector P and motion decoder.
- :mod:`train.fima.momentum` -- EMA update, shuffled BatchNorm, key queues.
- :mod:`train.fima.model` -- :class:`~train.fima.model.FimaPretrainer` assembling FIMA or MoCo.
- :mod:`train.fima.authors` -- continue from a checkpoint of the FIMA authors' code.
"""

from train.fima.authors import (
    AuthorsCheckpointError,
    authors_fima_config,
    convert_authors_state_dict,
    load_authors_checkpoint,
    read_authors_run,
    start_from_authors,
)
from train.fima.model import DEFAULT_FIMA_CONFIG, METHODS, FimaPretrainer

__all__ = [
    "FimaPretrainer",
    "DEFAULT_FIMA_CONFIG",
    "METHODS",
    "convert_authors_state_dict",
    "load_authors_checkpoint",
    "authors_fima_config",
    "AuthorsCheckpointError",
    "read_authors_run",
    "start_from_authors",
]
