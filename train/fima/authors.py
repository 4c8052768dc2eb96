"""Continue from the FIMA authors' code: their ``moco.builder.MoCo`` state dict -> :class:`FimaPretrainer`.

The authors' ``train.py`` saves ``checkpoint_XXXX.pth.tar`` = ``{epoch, arch, state_dict, optimizer}``,
``epoch`` being the number of finished epochs (their ``--resume`` starts there), ``state_dict`` the
(DDP-wrapped, ``module.``-prefixed) MoCo module. Its parts map onto ours as:

==========================================================  ===========================================
authors' key                                                ours
==========================================================  ===========================================
``encoder_q.*`` / ``encoder_k.*``                           ``encoder_q.*`` / ``encoder_k.*`` (same names)
``projector_dense{,_k}.net.0`` / ``.net.2`` (Conv2d 1x1)    ``projector{,_k}.fc1`` / ``.fc2`` (Conv3d 1x1x1)
``embedding1`` / ``embedding2``                             ``decoder.embed_in`` / ``decoder.embed_out``
``cls_token``                                               ``decoder.cls_token``
``transformer_decoder.layers.i.multihead_attn.*``           ``decoder.layers.i.cross_attn.*``
``...layers.i.norm2`` / ``norm3``                           ``decoder.layers.i.attn_norm`` / ``ffn_norm``
``...layers.i.linear1`` / ``linear2``                       ``decoder.layers.i.ffn_in`` / ``ffn_out``
``queue`` / ``motion_queue`` / ``queue_dense`` ``(D, K)``   ``queue`` / ``motion_queue`` / ``dense_queue``
                                                            ``.queue`` ``(K, D)``
``queue_ptr`` / ``motion_queue_ptr`` / ``queue_dense_ptr``  ``<same queues>.ptr`` (0-d)
==========================================================  ===========================================

Keys of the authors' parameter-free helpers (``aug_gpu.*``, the kornia augmentation constants) are
dropped. The model to load into must be built for the same backbone and sizes: queue sizes equal
to the checkpoint's (``queue_size``, ``motion_queue_size``; ``dense_queue_size`` 31360 for their
Kinetics runs, 0 otherwise) -- :func:`authors_fima_config` reads them from the state dict.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from train.common.config import ConfigError

__all__ = [
    "AuthorsCheckpointError", "convert_authors_state_dict", "load_authors_checkpoint", "authors_fima_config",
    "read_authors_run", "start_from_authors",
]

#: Helper modules of the authors' MoCo that hold no learned state (augmentation constants only).
_DROPPED_PREFIXES = ("aug_gpu.", "dense_loss.", "caam_mask.", "gen_static_diff.", "pos_embedding.")

_LAYER_PARTS = {
    "multihead_attn": "cross_attn",
    "norm2": "attn_norm",
    "norm3": "ffn_norm",
    "linear1": "ffn_in",
    "linear2": "ffn_out",
}
_PROJECTOR_PARTS = {"net.0": "fc1", "net.2": "fc2"}
_QUEUES = {
    "queue": "queue",
    "motion_queue": "motion_queue",
    "queue_dense": "dense_queue",
}
_REQUIRED = (
    "cls_token",
    "queue",
    "queue_ptr",
    "motion_queue",
    "motion_queue_ptr",
    "embedding1.weight",
    "embedding1.bias",
    "embedding2.weight",
    "embedding2.bias",
)


class AuthorsCheckpointError(ValueError):
    """The file or state dict is not a checkpoint of the FIMA authors' ``moco.builder.MoCo``."""


def _convert_key(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """Our name and tensor for one authors' entry; None if the key is not part of their MoCo."""
    for prefix in ("encoder_q.", "encoder_k."):
        if key.startswith(prefix) and len(key) > len(prefix):
            return key, value
    m = re.fullmatch(r"projector_dense(_k)?\.(net\.[02])\.(weight|bias)", key)
    if m:
        ours = f"projector{m.group(1) or ''}.{_PROJECTOR_PARTS[m.group(2)]}.{m.group(3)}"
        return ours, value[..., None] if m.group(3) == "weight" else value  # Conv2d 1x1 -> Conv3d 1x1x1
    m = re.fullmatch(r"embedding([12])\.(weight|bias)", key)
    if m:
        return f"decoder.embed_{'in' if m.group(1) == '1' else 'out'}.{m.group(2)}", value
    if key == "cls_token":
        return "decoder.cls_token", value
    m = re.fullmatch(r"transformer_decoder\.layers\.(\d+)\.(multihead_attn|norm2|norm3|linear1|linear2)\.(.+)", key)
    if m:
        return f"decoder.layers.{m.group(1)}.{_LAYER_PARTS[m.group(2)]}.{m.group(3)}", value
    for theirs, ours in _QUEUES.items():
        if key == theirs:
            return f"{ours}.queue", value.t().contiguous()
        if key == f"{theirs}_ptr":
            return f"{ours}.ptr", value.reshape(())
    return None


def convert_authors_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the state dict of the authors' ``moco.builder.MoCo`` to one of :class:`FimaPretrainer`.

    Args:
        state_dict: their module's state dict, with or without the ``module.`` prefix of DDP.

    Returns:
        A state dict that ``FimaPretrainer(backbone, "fima", cfg).load_state_dict(..., strict=True)``
        accepts for the same backbone and queue sizes (see :func:`authors_fima_config`).

    Raises:
        AuthorsCheckpointError: naming the missing and the unexpected keys, if ``state_dict`` is not
            their MoCo's.
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    seen: set[str] = set()
    for raw_key, value in state_dict.items():
        key = raw_key[len("module.") :] if raw_key.startswith("module.") else raw_key
        if key.startswith(_DROPPED_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            unexpected.append(raw_key)
            continue
        converted = _convert_key(key, value)
        if converted is None:
            unexpected.append(raw_key)
            continue
        seen.add(key)
        out[converted[0]] = converted[1]
    missing = [k for k in _REQUIRED if k not in seen]
    for group in ("encoder_q.", "encoder_k.", "projector_dense.", "projector_dense_k.", "transformer_decoder.layers."):
        if not any(k.startswith(group) for k in seen):
            missing.append(group + "*")
    if "queue_dense" in seen and "queue_dense_ptr" not in seen:
        missing.append("queue_dense_ptr")
    if missing or unexpected:
        raise AuthorsCheckpointError(
            "not a state dict of the FIMA authors' moco.builder.MoCo: "
            f"missing keys {missing or 'none'}, unexpected keys {unexpected[:20] or 'none'}"
            f"{f' (and {len(unexpected) - 20} more)' if len(unexpected) > 20 else ''}; "
            "pass the 'state_dict' of a checkpoint_XXXX.pth.tar written by their train.py"
        )
    return out


def authors_fima_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``fima`` config values a converted state dict needs: embedding width and queue sizes.

    Args:
        state_dict: the authors' MoCo state dict, or the result of :func:`convert_authors_state_dict`
            (as returned by :func:`load_authors_checkpoint`).

    Returns:
        ``{"embed_dim", "queue_size", "motion_queue_size", "dense_queue_size"}``.

    Raises:
        AuthorsCheckpointError: if ``state_dict`` is neither.
    """
    converted = state_dict if "queue.queue" in state_dict else convert_authors_state_dict(state_dict)
    if "motion_queue.queue" not in converted:
        raise AuthorsCheckpointError("the converted state dict has no motion_queue.queue; convert a FIMA (not MoCo) state dict")
    dense = converted.get("dense_queue.queue")
    return {
        "embed_dim": int(converted["queue.queue"].shape[1]),
        "queue_size": int(converted["queue.queue"].shape[0]),
        "motion_queue_size": int(converted["motion_queue.queue"].shape[0]),
        "dense_queue_size": int(dense.shape[0]) if dense is not None else 0,
    }


def load_authors_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """Read a ``checkpoint_XXXX.pth.tar`` of the authors' ``train.py`` (tensors only, no code unpickled).

    Args:
        path: the checkpoint file.

    Returns:
        ``(state_dict, epoch)``: the converted :class:`FimaPretrainer` state dict and the
        checkpoint's ``epoch`` (finished epochs, i.e. the epoch to continue with).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        AuthorsCheckpointError: if the file cannot be read or is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init-from-authors {path}: file not found; pass a checkpoint_XXXX.pth.tar of the authors' train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for unreadable files
        raise AuthorsCheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "pass a checkpoint_XXXX.pth.tar written by the FIMA authors' train.py"
        ) from exc
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping) or "epoch" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise AuthorsCheckpointError(
            f"{path} is not a checkpoint of the FIMA authors' train.py (expected a dict with 'epoch' and 'state_dict', "
            f"found {found}); pass a checkpoint_XXXX.pth.tar"
        )
    return convert_authors_state_dict(ckpt["state_dict"]), int(ckpt["epoch"])


def read_authors_run(path: Path, cfg: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
    """Read and convert an authors' checkpoint for ``--init-from-authors``, checking this run can hold it.

    Args:
        path: the authors' ``checkpoint_XXXX.pth.tar``.
        cfg: the resolved pretraining config.

    Returns:
        ``(converted state dict, finished epochs)``.

    Raises:
        ConfigError: the run is not FIMA, has no epochs left after the checkpoint's, or its queue
            sizes or embedding width differ from the checkpoint's.
        AuthorsCheckpointError: the file is not a checkpoint of the authors' ``train.py``.
    """
    if cfg["method"] != "fima":
        raise ConfigError(f"--init-from-authors needs method=fima (the authors' module is FIMA); this run is {cfg['method']}")
    state, epoch = load_authors_checkpoint(path)
    epochs = int(cfg["train"]["epochs"])
    if epoch >= epochs:
        raise ConfigError(f"--init-from-authors {path} has finished {epoch} epochs; set train.epochs above {epoch} to continue")
    ours = cfg["fima"]
    wrong = [f"fima.{key}={value} (this run has {ours[key]})" for key, value in authors_fima_config(state).items() if ours[key] != value]
    if wrong:
        raise ConfigError(f"--init-from-authors {path} needs {', '.join(wrong)}; set those keys to the checkpoint's values")
    return state, epoch


def start_from_authors(
    model: nn.Module,
    scheduler: Any,
    authors: tuple[dict[str, torch.Tensor], int],
    path: Path,
    arch: str,
    steps_per_epoch: int,
) -> int:
    """Load the converted authors' state strictly and move the schedule to their epoch; returns that epoch.

    Raises:
        ConfigError: the state does not fit ``model`` (other keys or shapes).
    """
    state, epoch = authors
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ConfigError(
            f"--init-from-authors {path} does not fit model.arch={arch}: missing keys "
            f"{sorted(missing)[:5]} ({len(missing)}), unexpected keys {sorted(unexpected)[:5]} ({len(unexpected)}); "
            "set model.arch to the backbone the authors' run trained"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same keys, other shapes
        raise ConfigError(f"--init-from-authors {path} does not fit this run: {str(exc).splitlines()[-1].strip()}") from None
    steps = epoch * steps_per_epoch
    with warnings.catch_warnings():
        # the schedule is moved, not stepped by training: torch would warn that no optimizer step came first
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.last_epoch = steps - 1
        scheduler.step()
    return epoch
