"""Clip planning and preparation: which frames each clip takes, decoding them, making model input.

Clip ``k`` covers frames ``start_k + i * step`` for ``i < clip_len`` with ``start_k = k * stride``;
clips are taken while a whole clip fits, so a tail shorter than a clip is not covered. A video
shorter than one clip (:func:`fima_models._utils.clip_span` frames) gives exactly one clip
starting at frame 0, padded by repeating its last frame (:func:`is_padded`).
"""
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fima_models._utils import clip_span
from fima_models.models import pretrained_cfg_dict
from fima_models.transforms import EvalTransform
from fima_models.video import VideoReader

__all__ = [
    'CHUNK_BYTES', 'check_sampling', 'clip_starts', 'clip_frame_indices', 'is_padded', 'read_clips', 'read_clip',
    'iter_clip_chunks', 'build_transform', 'prepare_clips', 'raw_clip_limit',
]

#: Most bytes of decoded frames :func:`iter_clip_chunks` holds at once (besides one clip at least).
CHUNK_BYTES = 256 * 2**20


def check_sampling(clip_len: int, stride: int, step: int) -> None:
    """Refuse a clip length, stride or step that is not a positive integer.

    Raises:
        ValueError: naming the first bad value.
    """
    for name, value in (('clip_len', clip_len), ('stride', stride), ('step', step)):
        if int(value) != value or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')


def is_padded(num_frames: int, clip_len: int, step: int = 1) -> bool:
    """Whether a video of ``num_frames`` frames is shorter than one clip, so its one clip is padded."""
    return num_frames < clip_span(clip_len, step)


def clip_starts(num_frames: int, clip_len: int, stride: int, step: int = 1) -> range:
    """First frame index of every clip of a video.

    Args:
        num_frames: frames in the video (>= 1).
        clip_len: frames per clip.
        stride: frames between the starts of consecutive clips.
        step: frames between consecutive frames of a clip (temporal stride within a clip).

    Returns:
        ``range`` of start indices; ``range(0, 1)`` when the video is shorter than one clip.
    """
    check_sampling(clip_len, stride, step)
    if num_frames < 1:
        raise ValueError(f'a video needs at least one frame to extract features, got {num_frames}')
    if is_padded(num_frames, clip_len, step):
        return range(0, 1)
    return range(0, num_frames - clip_span(clip_len, step) + 1, stride)


def clip_frame_indices(start: int, num_frames: int, clip_len: int, step: int = 1) -> Tuple[List[int], int]:
    """Frame indices of one clip, padded by repeating the last frame of the video.

    Args:
        start: first frame of the clip.
        num_frames: frames in the video.
        clip_len: frames per clip.
        step: frames between consecutive clip frames.

    Returns:
        ``(indices, end)``: ``clip_len`` indices and one past the last real frame used.
    """
    last = num_frames - 1
    wanted = [start + i * step for i in range(clip_len)]
    real = [i for i in wanted if i <= last]
    if not real:
        raise ValueError(f'clip start {start} lies outside a video of {num_frames} frames')
    return [min(i, last) for i in wanted], real[-1] + 1


def read_clips(
        reader: VideoReader, starts: Sequence[int], clip_len: int, step: int = 1,
) -> Tuple[torch.Tensor, List[int]]:
    """Decode several clips in one pass, padding past the end of the video with its last frame.

    The frames of all clips are fetched with one ``get_frames`` call, so the decoder seeks once per
    run of nearby clips instead of once per clip (a large saving with long keyframe intervals).

    Args:
        reader: the open video.
        starts: first frame of every clip.
        clip_len: frames per clip.
        step: frames between consecutive clip frames.

    Returns:
        ``(frames, ends)``: uint8 ``[K, clip_len, H, W, 3]`` and, per clip, one past its last real frame.
    """
    indices: List[int] = []
    ends: List[int] = []
    for start in starts:
        clip_indices, end = clip_frame_indices(start, reader.num_frames, clip_len, step)
        indices += clip_indices
        ends.append(end)
    frames = reader.get_frames(indices)
    return frames.reshape(len(ends), clip_len, *frames.shape[1:]), ends


def read_clip(reader: VideoReader, start: int, clip_len: int, step: int = 1) -> Tuple[torch.Tensor, int]:
    """Decode one clip (see :func:`read_clips`): uint8 ``[clip_len, H, W, 3]`` and its end frame."""
    frames, ends = read_clips(reader, [start], clip_len, step)
    return frames[0], ends[0]


def iter_clip_chunks(
        reader: VideoReader, clip_len: int, stride: int, step: int = 1, max_clips: int = 8,
        max_bytes: int = CHUNK_BYTES,
) -> Iterator[Tuple[torch.Tensor, List[int], List[int]]]:
    """All clips of a video, decoded ``max_clips`` at a time (fewer for large frames).

    Yields:
        ``(frames, starts, ends)``: uint8 ``[K, clip_len, H, W, 3]`` and the clips' frame ranges.
    """
    clip_bytes = clip_len * reader.height * reader.width * 3
    per_chunk = max(1, min(max_clips, max_bytes // max(clip_bytes, 1)))
    starts = list(clip_starts(reader.num_frames, clip_len, stride, step))
    for lo in range(0, len(starts), per_chunk):
        chunk = starts[lo:lo + per_chunk]
        frames, ends = read_clips(reader, chunk, clip_len, step)
        yield frames, chunk, ends


def build_transform(
        model: Optional[nn.Module],
        size: Optional[int] = None,
        crop_pct: Optional[float] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
) -> EvalTransform:
    """Evaluation transform with the model's pretrained-config values for anything not given.

    Raises:
        ValueError: a value is neither given nor found in ``model.pretrained_cfg``.
    """
    cfg = pretrained_cfg_dict(model)
    if size is None:
        input_size = cfg.get('input_size')
        size = int(input_size[-1]) if input_size else None
    crop_pct = crop_pct if crop_pct is not None else (cfg.get('crop_pct') or 0.875)
    mean = mean if mean is not None else cfg.get('mean')
    std = std if std is not None else cfg.get('std')
    missing = [name for name, value in (('size', size), ('mean', mean), ('std', std)) if value is None]
    if missing:
        raise ValueError(
            f'the model has no pretrained config giving {", ".join(missing)}; pass '
            f'{", ".join(f"{m}=..." for m in missing)} to extract_features (or --size on the command line)')
    return EvalTransform(size=int(size), crop_pct=float(crop_pct), mean=tuple(mean), std=tuple(std))


def prepare_clips(
        clips: Union[torch.Tensor, Sequence[torch.Tensor]], transform: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
) -> torch.Tensor:
    """Normalised float clips ``(N, 3, T, S, S)`` (multi-crop: ``(N, V, 3, T, S, S)``) on ``device``.

    Args:
        clips: uint8 ``[N, T, H, W, 3]`` frames, float clips that are already transformed (only
            moved), or a list of single clips of either kind and any frame size.
        transform: the evaluation transform (or its multi-crop form), run on ``device`` (on a
            GPU this takes the resize and normalisation off the CPU).
        device: where the model runs.
    """
    if isinstance(clips, torch.Tensor):
        clips = clips.to(device, non_blocking=True)
        return clips if clips.is_floating_point() else transform(clips)
    return torch.stack([prepare_clips(clip, transform, device) for clip in clips])


def raw_clip_limit(device: torch.device, clip_len: int, size: int, crops: int = 1) -> int:
    """Largest uint8 clip (in bytes) that decoding workers should ship untransformed.

    On a CPU the workers transform every clip (0), in parallel with the model. On a GPU a clip
    goes raw when its uint8 frames are no larger than the float32 views the transform makes
    (``crops`` of them), so the device does the resize and normalisation and less data crosses
    process boundaries; larger frames (HD video) are still reduced in the workers.
    """
    return 0 if device.type == 'cpu' else 4 * 3 * clip_len * size * size * crops
