"""Checkpoint reading, format detection and backbone extraction.

Video backbones reach this project in many containers: the FIMA authors' training checkpoints
(``checkpoint_XXXX.pth.tar``), MoCo-style self-supervised checkpoints, plain ``state_dict`` files,
torchvision weights and training-reference checkpoints, safetensors files and this project's own
``train/`` checkpoints. This module reads any of them *safely* (pickles are unpickled with
``torch.load(weights_only=True)``, so a file that tries to run code is refused before anything runs)
and pulls out the backbone ``state_dict`` with the model's own key names::

    from fima_models.checkpoint import read_checkpoint, extract_backbone
    extracted = extract_backbone(read_checkpoint('checkpoint_0199.pth.tar'))
    extracted.format        # 'fima'
    extracted.state_dict    # keys like 'stem.0.weight', 'layer1.0.conv1.0.0.weight', ...
    extracted.dropped       # 'module.encoder_k.*', 'module.queue', 'module.decoder.*', ...

Both :func:`fima_models.models.load_pretrained` and :func:`fima_models.convert.convert_checkpoint`
use it, so every loading path understands the same formats.
"""
import argparse
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import torch

from fima_models._utils import TRAIN_CHECKPOINT_FORMAT, describe_error

__all__ = [
    'CheckpointError', 'UnsafeCheckpointError', 'ExtractedCheckpoint',
    'read_checkpoint', 'extract_backbone', 'load_backbone_state_dict', 'summarize_keys', 'require_finite',
]

_logger = logging.getLogger(__name__)

#: Prefixes under which self-supervised checkpoints keep the pretrained (query) encoder.
_ENCODER_PREFIXES = ('encoder_q.', 'backbone.')
#: Sub-modules of a self-supervised encoder that are training heads, not backbone.
_SSL_HEAD_PREFIXES = ('fc.', 'id_head.')

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the requested model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint references code or objects that ``weights_only`` unpickling refuses."""


@dataclass
class ExtractedCheckpoint:
    """The backbone found in a checkpoint and what was left behind.

    Attributes:
        state_dict: Backbone tensors under the model's own key names.
        format: Detected container: ``'fima-models-train'``, ``'fima'``, ``'moco'``, ``'backbone'``,
            ``'torchvision-train'``, ``'state_dict'`` or ``'safetensors'``.
        dropped: Original keys that were not part of the backbone (key encoder, projectors, queues ...).
        meta: Non-tensor facts from the container (``epoch``, ``arch``, ``model_name``, ``method``,
            ``num_classes``, ``config``), when present.
    """
    state_dict: Dict[str, torch.Tensor]
    format: str
    dropped: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: PathLike) -> Any:
    """Read a checkpoint file without executing any code it may contain.

    ``.safetensors`` files are read with safetensors; everything else with
    ``torch.load(map_location='cpu', weights_only=True)``. ``argparse.Namespace`` (stored as ``args``
    by torchvision's training references) is the only non-tensor class allowed besides torch's
    defaults; it carries data only.

    Args:
        path: Checkpoint file.

    Returns:
        The deserialised object (usually a dict).

    Raises:
        CheckpointError: The file does not exist or is not a checkpoint.
        UnsafeCheckpointError: The pickle needs code or classes that weights-only loading refuses.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f'Checkpoint file not found: {path}. Check the path.')
    if path.is_dir():
        raise CheckpointError(
            f'{path} is a directory, not a checkpoint file. Pass the weight file itself, '
            f"or load a converted folder with create_model('local-dir:{path}').")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device='cpu')
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'{path} is not a readable safetensors file ({e}).') from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        # a pickle that names a class or function to call (GLOBAL) is unsafe; other refusals are garbage
        if 'GLOBAL' in str(e).upper().replace('GLOBALS', ''):
            raise UnsafeCheckpointError(
                f'Refused to load {path}: the pickle references code or classes that safe '
                f'(weights_only) loading does not allow, and nothing from it was executed. Detail: '
                f'{_unpickling_detail(e)}. If you trust the file, re-save only its tensors in a trusted '
                f"environment, e.g. torch.save(torch.load(path, weights_only=False)['state_dict'], out), "
                f'then convert that.') from e
        raise CheckpointError(f'{path} is not a PyTorch checkpoint ({_unpickling_detail(e)}).') from e
    except Exception as e:  # any other failure to parse untrusted bytes means: not a checkpoint
        raise CheckpointError(
            f'{path} is not a readable PyTorch or safetensors checkpoint ({_first_line(e)}).') from e


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file (by suffix, or by its 8-byte header length + JSON)."""
    if path.suffix == '.safetensors':
        return True
    try:
        with path.open('rb') as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < 100_000_000


def _unpickling_detail(err: BaseException) -> str:
    """The line of a weights-only refusal that says what was refused (torch puts advice around it)."""
    lines = [line.strip() for line in str(err).splitlines()]
    return next((line for line in lines if 'GLOBAL' in line or 'Unsupported' in line), _first_line(err))


def _first_line(err: BaseException) -> str:
    """The first line of an error's text (torch's parse errors add paragraphs of advice)."""
    return describe_error(err).splitlines()[0]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Keep the keys under ``prefix`` (prefix removed); return them and the other keys."""
    kept = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    dropped = [k for k in sd if not k.startswith(prefix)]
    return kept, dropped


def _meta(obj: Mapping[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
    return {k: obj[k] for k in keys if k in obj and not isinstance(obj[k], (Mapping, torch.Tensor))}


def extract_backbone(obj: Any) -> ExtractedCheckpoint:
    """Detect the container format of a checkpoint object and return its backbone ``state_dict``.

    Rules, in order:

    * ``{"format": "fima-models-train", "model": ...}`` (this project's ``train/``): ``model`` as is.
    * a dict with ``state_dict`` / ``model`` / ``model_state`` holding the tensors (FIMA, MoCo,
      torchvision references ...): unwrap it first.
    * a leading ``module.`` (DataParallel) is removed.
    * ``encoder_q.*`` (FIMA / MoCo query encoder) or ``backbone.*`` present: keep only those, and
      drop the encoder's ``fc`` / ``id_head`` training heads; everything else (key encoder,
      projectors, decoder, queues) is dropped. The format is ``'fima'`` when a motion decoder is
      present, ``'moco'`` for other ``encoder_q`` checkpoints and ``'backbone'`` otherwise.
    * otherwise the tensors are the backbone (plain / torchvision ``state_dict``).

    Args:
        obj: What :func:`read_checkpoint` returned.

    Returns:
        The extracted backbone and a record of what was dropped.

    Raises:
        CheckpointError: No tensors that could be model weights were found.
    """
    meta: Dict[str, Any] = {}
    fmt = 'state_dict'
    if isinstance(obj, Mapping) and obj.get('format') == TRAIN_CHECKPOINT_FORMAT:
        meta = _meta(obj, ('model_name', 'method', 'epoch', 'step', 'num_classes', 'version'))
        if isinstance(obj.get('config'), Mapping):
            meta['config'] = dict(obj['config'])
        sd = obj.get('model')
        if not _is_state_dict(sd):
            raise CheckpointError(
                "This fima-models train checkpoint has no 'model' state_dict; it may be truncated. "
                'Use a checkpoint written by `python -m train` after at least one save.')
        sd, dropped = _strip(sd, 'module.') if all(k.startswith('module.') for k in sd) else (dict(sd), [])
        return ExtractedCheckpoint(sd, TRAIN_CHECKPOINT_FORMAT, dropped, meta)

    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        meta = _meta(obj, ('epoch', 'arch', 'best_acc1'))
        for key in ('state_dict', 'model', 'model_state', 'model_state_dict', 'net', 'network'):
            if _is_state_dict(obj.get(key)):
                fmt = 'torchvision-train' if key == 'model' and ('args' in obj or 'lr_scheduler' in obj) \
                    else 'state_dict'
                obj = obj[key]
                break
        else:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if not tensors:
                raise CheckpointError(
                    f'No model weights found in the checkpoint (top-level keys: {sorted(map(str, obj))[:12]}). '
                    "Expected a state_dict, or a dict with a 'state_dict' / 'model' entry.")
            obj = tensors
    if not _is_state_dict(obj):
        raise CheckpointError(
            f'The checkpoint holds a {type(obj).__name__}, not model weights. Expected a state_dict '
            "(str -> tensor), or a dict with a 'state_dict' / 'model' entry.")

    sd: Dict[str, torch.Tensor] = dict(obj)
    dropped: List[str] = []
    if all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    elif any(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
    for prefix in _ENCODER_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            has_decoder = any('decoder' in k for k in sd)
            sd, dropped = _strip(sd, prefix)
            heads = [k for k in sd if k.startswith(_SSL_HEAD_PREFIXES)]
            for k in heads:
                del sd[k]
            dropped = [prefix + k for k in heads] + dropped
            fmt = ('fima' if has_decoder else 'moco') if prefix == 'encoder_q.' else 'backbone'
            break
    if not sd:
        raise CheckpointError('The checkpoint contains no backbone tensors after removing training-only parts.')
    return ExtractedCheckpoint(sd, fmt, dropped, meta)


def load_backbone_state_dict(path: PathLike) -> ExtractedCheckpoint:
    """Read a checkpoint file safely and extract its backbone (:func:`read_checkpoint` + :func:`extract_backbone`).

    Args:
        path: Checkpoint file of any supported format.

    Returns:
        The extracted backbone; safetensors files report format ``'safetensors'`` unless they carry
        a recognisable wrapper prefix.
    """
    extracted = extract_backbone(read_checkpoint(path))
    if extracted.format == 'state_dict' and _is_safetensors(Path(path).expanduser()):
        extracted.format = 'safetensors'
    return extracted


def summarize_keys(keys: Sequence[str], limit: int = 8) -> str:
    """Format a key list for an error or log message, grouping by top-level module past ``limit``.

    Args:
        keys: State-dict keys.
        limit: Show individual keys up to this many.

    Returns:
        ``'a.weight, b.bias'`` or ``'encoder_k.* (120 keys), queue'``-style text.
    """
    keys = list(keys)
    if len(keys) <= limit:
        return ', '.join(keys)
    groups: Dict[str, int] = {}
    for k in keys:
        head = k.split('.', 1)[0]
        groups[head] = groups.get(head, 0) + 1
    parts = [f'{g}.* ({n} keys)' if n > 1 else next(k for k in keys if k.split('.', 1)[0] == g)
             for g, n in groups.items()]
    text = ', '.join(parts[:limit])
    return text + (f', ... ({len(parts) - limit} more groups)' if len(parts) > limit else '')


def require_finite(sd: Mapping[str, torch.Tensor], name: str = 'the checkpoint') -> None:
    """Refuse weights holding NaN or infinite values (they would make every output NaN, silently).

    Args:
        sd: State dict to check (non-floating tensors are skipped).
        name: What ``sd`` is, for the message.

    Raises:
        CheckpointError: Naming the tensors with non-finite values.
    """
    bad = [k for k, v in sd.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f'Weights from {name} hold NaN or infinite values in {len(bad)} tensor(s): {summarize_keys(bad)}. '
            'The training run diverged or the file is damaged; use an earlier checkpoint.')
