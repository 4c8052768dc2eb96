"""State-dict surgery that fits pretrained weights to a model: input channels, classifier, key remaps.

Nothing here reads files or the network (that is :mod:`._hub`) or loads a model (that is
:func:`._builder.load_pretrained`); these functions only transform tensors and key lists.
"""
import logging
import math
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from fima_models.checkpoint import summarize_keys

from ._pretrained_cfg import pretrained_cfg_dict

__all__ = ['adapt_input_conv3d', 'adapt_state_dict', 'remap_classifier', 'as_name_list', 'keys_under']

_logger = logging.getLogger(__name__)


def as_name_list(value: Any) -> List[str]:
    """A pretrained-config module field (``first_conv``, ``classifier``: a name, names or nothing) as a list."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def keys_under(keys: Iterable[str], modules: Sequence[str]) -> List[str]:
    """The state-dict keys that belong to one of ``modules`` (the module itself or below it)."""
    return [k for k in keys if any(k == m or k.startswith(m + '.') for m in modules)]


def adapt_input_conv3d(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a pretrained first-conv weight ``(O, I, kT, kH, kW)`` to ``in_chans`` input channels.

    One channel gets the sum over the pretrained channels (a grey clip then gives the response of a
    grey RGB clip). More or fewer channels repeat the pretrained ones cyclically and rescale by
    ``I / in_chans`` so the expected activation magnitude is unchanged.

    Args:
        weight: 5-D conv weight.
        in_chans: Target number of input channels.

    Returns:
        The adapted weight, in the input's dtype.
    """
    if weight.ndim != 5:
        raise ValueError(f'adapt_input_conv3d expects a 5-D Conv3d weight (O, I, kT, kH, kW), '
                         f'got shape {tuple(weight.shape)}.')
    if in_chans < 1:
        raise ValueError(f'in_chans must be >= 1, got {in_chans}.')
    src_chans = weight.shape[1]
    if in_chans == src_chans:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_chans / src_chans)
        w = w.repeat(1, repeats, 1, 1, 1)[:, :in_chans] * (src_chans / in_chans)
    return w.to(dtype)


def remap_classifier(
        state_dict: Mapping[str, torch.Tensor],
        source: str,
        target: str,
        target_ndim: int,
) -> Dict[str, torch.Tensor]:
    """Rename a checkpoint classifier and reshape its weight between linear and 1x1x1-conv form.

    The ``checkpoint_filter_fn`` of a model file is this call with the model's names: a classifier
    saved as ``source.{weight,bias}`` becomes ``target.{weight,bias}``; a 5-D ``(K, C, 1, 1, 1)``
    weight is flattened for a linear target (``target_ndim=2``), a 2-D one gets three unit
    dimensions for a conv target (``target_ndim=5``). Other keys, and their order, are kept.

    Args:
        state_dict: Backbone state dict.
        source: Classifier module name in the checkpoint, e.g. ``'conv3d_0c_1x1.conv3d'``.
        target: Classifier module name in the model, e.g. ``'fc'``.
        target_ndim: 2 for a linear classifier, 5 for a 1x1x1 conv.

    Returns:
        A new state dict.
    """
    if target_ndim not in (2, 5):
        raise ValueError(f'target_ndim must be 2 (linear) or 5 (1x1x1 conv), got {target_ndim}.')
    out = {}
    for key, value in state_dict.items():
        if key in (f'{source}.weight', f'{source}.bias'):
            key = f'{target}.{key.rsplit(".", 1)[1]}'
            if key.endswith('.weight') and target_ndim == 2 and value.ndim == 5:
                value = value.flatten(1)
            elif key.endswith('.weight') and target_ndim == 5 and value.ndim == 2:
                value = value[:, :, None, None, None]
        out[key] = value
    return out


def adapt_state_dict(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        pretrained_cfg: Any = None,
) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Fit a backbone state dict to ``model``: input channels and classifier.

    The first convolution(s) named by ``first_conv`` are adapted to ``model.in_chans`` with
    :func:`adapt_input_conv3d`. Classifier keys (``classifier``) are dropped when the model has no
    classifier (``num_classes=0``) or its shapes differ from the checkpoint's.

    Args:
        model: Target model (``in_chans`` and ``num_classes`` attributes are used when present).
        state_dict: Backbone state dict with the model's key names.
        pretrained_cfg: Config naming ``first_conv`` and ``classifier``; defaults to ``model.pretrained_cfg``.

    Returns:
        ``(state_dict, dropped_keys, adapted_keys)``.
    """
    cfg = pretrained_cfg_dict(pretrained_cfg if pretrained_cfg is not None else model)
    sd = dict(state_dict)
    model_sd = model.state_dict()
    adapted: List[str] = []
    in_chans = getattr(model, 'in_chans', None)
    for conv in as_name_list(cfg.get('first_conv')):
        key = f'{conv}.weight'
        if in_chans and key in sd and sd[key].ndim == 5 and sd[key].shape[1] != in_chans:
            before = tuple(sd[key].shape)
            sd[key] = adapt_input_conv3d(sd[key], in_chans)
            adapted.append(key)
            _logger.info('Adapted %s from %s to %s for in_chans=%d', key, before, tuple(sd[key].shape), in_chans)
    heads = as_name_list(cfg.get('classifier'))
    ckpt_head = keys_under(sd, heads)
    model_head = keys_under(model_sd, heads)
    dropped: List[str] = []
    if ckpt_head:
        fits = set(ckpt_head) == set(model_head) and all(sd[k].shape == model_sd[k].shape for k in ckpt_head)
        if not fits:
            dropped = ckpt_head
            for k in ckpt_head:
                del sd[k]
            w = next((k for k in ckpt_head if k.endswith('weight')), ckpt_head[0])
            _logger.info(
                'Dropped the checkpoint classifier (%s, %d classes) because the model has num_classes=%s; '
                'the model classifier keeps its initialisation.',
                summarize_keys(ckpt_head), state_dict[w].shape[0], getattr(model, 'num_classes', '?'))
    elif model_head:
        _logger.info('The checkpoint has no classifier; %s keeps its initialisation.', summarize_keys(model_head))
    return sd, dropped, adapted
