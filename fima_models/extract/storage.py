"""Where features are kept: feature files and their sidecars, fingerprints, the output folder and its lock.

A feature file (``.npy`` or ``.safetensors``) is written first and its JSON sidecar last, each
atomically (:func:`fima_models._utils.atomic_write_bytes`); the sidecar records the feature
file's size, so it is the completion marker (:func:`read_sidecar`). What produced a result is
recorded as a fingerprint: the SHA-256 of the weights (:func:`weights_digest`), every setting, and
the input's resolved path, size and modification time (:func:`source_id`).
"""
import contextlib
import hashlib
import io
import json
import os
from pathlib import Path, PurePath
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from fima_models._utils import FolderLock, atomic_write_bytes, describe_os_error
from fima_models.extract.api import VideoFeatures

__all__ = [
    'FORMATS', 'SIDECAR_VERSION', 'NonFiniteFeaturesError', 'sidecar_path', 'save_features', 'read_sidecar',
    'load_features', 'weights_digest', 'source_id', 'output_path', 'open_output_folder',
]

#: Output formats of :func:`save_features`.
FORMATS = ('npy', 'safetensors')
#: Version of the sidecar JSON written by :func:`save_features`.
SIDECAR_VERSION = 1
#: safetensors metadata key holding :meth:`VideoFeatures.metadata` (kept from the first version).
_METADATA_KEY = 'fima_models.features'

PathLike = Union[str, 'os.PathLike[str]']


class NonFiniteFeaturesError(ValueError):
    """Features hold NaN or infinite values, so they are not saved as a finished result."""


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar of a feature file: ``x.npy`` -> ``x.npy.json``."""
    path = Path(path)
    return path.with_name(path.name + '.json')


def _features_bytes(result: VideoFeatures, fmt: str) -> bytes:
    features = result.features.detach().to('cpu', torch.float32).contiguous()
    if fmt == 'npy':
        buffer = io.BytesIO()
        np.save(buffer, features.numpy(), allow_pickle=False)
        return buffer.getvalue()
    from safetensors.torch import save

    tensors = {
        'features': features,
        'clip_starts': result.clip_starts.contiguous(),
        'clip_ends': result.clip_ends.contiguous(),
        'start_times': result.start_times.contiguous(),
        'end_times': result.end_times.contiguous(),
    }
    return save(tensors, metadata={_METADATA_KEY: json.dumps(result.metadata())})


def save_features(result: VideoFeatures, path: PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Save features as ``.npy`` or ``.safetensors`` plus a ``.json`` sidecar, atomically.

    The feature file is written first and the sidecar last, each through a temp file and a rename;
    the sidecar records the feature file's size, so a feature file without a matching sidecar is
    never taken as finished (see :func:`read_sidecar`). ``.safetensors`` files also carry the clip
    tensors and the metadata themselves.

    Args:
        result: the features to save.
        path: ``*.npy`` or ``*.safetensors``.
        extra: more JSON-serialisable fields for the sidecar.

    Returns:
        The sidecar path.

    Raises:
        NonFiniteFeaturesError: the features hold NaN or infinite values (nothing is written).
        OSError: the files cannot be written; earlier files of the same name stay as they were.
    """
    path = Path(path)
    fmt = path.suffix.lstrip('.')
    if fmt not in FORMATS:
        raise ValueError(f"feature file must end in .npy or .safetensors, got '{path.name}'")
    if not bool(torch.isfinite(result.features).all()):
        bad = int((~torch.isfinite(result.features)).sum())
        raise NonFiniteFeaturesError(
            f'the features for {path.name} hold {bad} NaN or infinite values of {result.features.numel()}; nothing '
            'was saved. The weights are probably damaged (check them with fima_models.checkpoint.require_finite) '
            'or the input is out of range')
    data = _features_bytes(result, fmt)
    atomic_write_bytes(path, data)
    sidecar = {
        'version': SIDECAR_VERSION, 'complete': True, 'file': path.name, 'format': fmt,
        'bytes': len(data), **result.metadata(), **(extra or {}),
    }
    side = sidecar_path(path)
    atomic_write_bytes(side, json.dumps(sidecar, indent=1).encode('utf-8'))
    return side


def read_sidecar(path: PathLike) -> Optional[Dict[str, Any]]:
    """The sidecar of a finished feature file, or ``None`` when it is missing or not finished.

    Finished means: the sidecar parses, says ``complete``, and the feature file exists with the
    recorded size. Temp files and half-written outputs therefore never count.
    """
    path = Path(path)
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not meta.get('complete') or meta.get('file') != path.name:
        return None
    try:
        if path.stat().st_size != meta.get('bytes'):
            return None
    except OSError:
        return None
    return meta


def load_features(path: PathLike) -> VideoFeatures:
    """Load a feature file written by :func:`save_features` (or ``fima-models extract``).

    Raises:
        FileNotFoundError: the file or its sidecar is missing or unfinished.
    """
    path = Path(path)
    meta = read_sidecar(path)
    if meta is None:
        raise FileNotFoundError(
            f"'{path}' is missing or unfinished (no complete sidecar {sidecar_path(path).name}); "
            'run the extraction again to finish it')
    if path.suffix == '.npy':
        features = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        from safetensors.torch import load_file

        features = load_file(str(path))['features']
    return VideoFeatures.from_metadata(features, meta)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values): what its weights are.

    Two models give the same digest exactly when they compute the same function with the same
    architecture, however the weights were loaded; it identifies the weights behind saved features.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to('cpu').contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode('utf-8'))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def source_id(path: Path) -> Dict[str, Any]:
    """What identifies an input file's content cheaply: resolved path, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return {'path': str(path)}
    return {'path': str(path.resolve()), 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def output_path(out_dir: Path, rel: PurePath, fmt: str) -> Path:
    """The feature file of a video whose output name (relative to ``out_dir``, no suffix) is ``rel``."""
    return out_dir / rel.parent / f'{rel.name}.{fmt}'


def open_output_folder(out: Path, lock: bool = True) -> contextlib.ExitStack:
    """Create the output folder and, with ``lock``, lock it against a second run; OS errors become one line.

    The ranks of one torchrun share the folder, so only rank 0 takes the lock.

    Raises:
        RuntimeError: the folder cannot be created or locked for writing (the message names it).
        fima_models._utils.FolderLockedError: another run holds the folder.
    """
    stack = contextlib.ExitStack()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if lock:
            stack.enter_context(FolderLock(out, 'extract'))
    except OSError as err:
        stack.close()
        raise RuntimeError(describe_os_error(err, out)) from err
    return stack
