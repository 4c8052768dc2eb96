"""Models for extraction: a backbone without classifier from a name or a converted folder, and its name."""
import os

import torch
from torch import nn

from fima_models._factory import create_model
from fima_models.models import pretrained_cfg_dict

__all__ = ['load_model', 'model_name_of']


def load_model(name_or_dir: str, pretrained: bool = True, seed: int = 0) -> nn.Module:
    """Create a backbone (without classifier) from a model name or a converted model folder.

    A randomly initialised model (``pretrained=False``) is built under ``torch.manual_seed(seed)``
    (without touching the caller's random state), so every run and every rank of a distributed
    extraction computes the same features.

    Args:
        name_or_dir: a registered name or alias (``r2plus1d_18``, ``i3d_fima``), ``hf-hub:...``,
            ``local-dir:...``, or an existing folder written by ``fima-models convert``.
        pretrained: load the weights of a named model (a folder always brings its weights).
        seed: seed of the random initialisation.
    """
    if os.path.isdir(name_or_dir):
        return create_model(f'local-dir:{name_or_dir}', pretrained=True, num_classes=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name_or_dir, pretrained=pretrained, num_classes=0)


def model_name_of(model: nn.Module) -> str:
    """``arch.tag`` of a timm model from its pretrained config, else its class name."""
    cfg = pretrained_cfg_dict(model)
    arch, tag = cfg.get('architecture'), cfg.get('tag')
    if arch:
        return f'{arch}.{tag}' if tag else str(arch)
    return type(model).__name__
