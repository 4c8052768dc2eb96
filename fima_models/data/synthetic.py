"""Procedural motion data: the embedded default data set for demos, smoke recipes and tests.

Every clip shows one textured object moving over a static, low-contrast textured background,
with a little sensor noise. The **label is the motion** of the object (direction, speed,
trajectory shape, scale change). Everything a single frame shows is random per video: the
object's shape, textures and colours, the background's texture and colour and the noise level.
Where the object is and how large it is come from one placement that every class draws alike,
so for the translations along an axis, the zooms, the shakes and ``Static`` the object's
position and size in a frame have the same distribution whatever the class (``_trajectory``
says how; circles and diagonal moves share the ranges only). The object's colour lies on the
other side of mid-grey than the background's, so it stands out at any resolution, and it stays
inside the frame.

:func:`write_motion_dataset` renders clips with numpy (vectorised over frames),
encodes them as real H.264 MP4 files and writes the UCF101 layout::

    root/UCF-101/<Class>/v_<Class>_g<NN>_c01.mp4
    root/ucfTrainTestlist/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt
    root/motion.json                      generation parameters (reuse check)

so ``build_dataset("ucf101", root)`` reads it through the same decoder and loaders
as real data. Generation is deterministic: clip ``j`` of class ``c`` depends only
on ``(seed, class name, j)``, never on the number of workers; :func:`dataset_clip` renders
any video of a data set again, with the true object mask (:class:`MotionClip`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from fima_models._utils import atomic_write_text
from fima_models.video import write_video

__all__ = ["MOTION_CLASSES", "MotionClip", "MotionSpec", "dataset_clip", "render_motion_clip", "write_motion_dataset"]

_logger = logging.getLogger(__name__)

_META_NAME = "motion.json"
_FORMAT_VERSION = 3


@dataclass(frozen=True)
class MotionSpec:
    """Parametric motion of a class.

    Attributes:
        kind: ``translate``, ``circle``, ``zoom``, ``oscillate`` or ``static``.
        direction: unit vector (x, y) in image coordinates (y points down) for
            ``translate`` / ``oscillate``; for ``circle`` x is +1 (clockwise on
            screen) or -1 (counter-clockwise); for ``zoom`` x is +1 (in) or -1 (out).
        speed: for ``translate``, how much longer (faster) the sweep is than a normal
            translation's; above 1 the object may enter or leave the frame.
    """

    kind: str
    direction: tuple[float, float] = (0.0, 0.0)
    speed: float = 1.0


_D = 1.0 / math.sqrt(2.0)

#: Available motion classes (name -> motion). Names double as UCF101 class names.
MOTION_CLASSES: dict[str, MotionSpec] = {
    "MoveLeft": MotionSpec("translate", (-1.0, 0.0)),
    "MoveRight": MotionSpec("translate", (1.0, 0.0)),
    "MoveUp": MotionSpec("translate", (0.0, -1.0)),
    "MoveDown": MotionSpec("translate", (0.0, 1.0)),
    "MoveDownRight": MotionSpec("translate", (_D, _D)),
    "MoveUpLeft": MotionSpec("translate", (-_D, -_D)),
    "MoveRightFast": MotionSpec("translate", (1.0, 0.0), speed=2.2),
    "CircleClockwise": MotionSpec("circle", (1.0, 0.0)),
    "CircleCounterClockwise": MotionSpec("circle", (-1.0, 0.0)),
    "ZoomIn": MotionSpec("zoom", (1.0, 0.0)),
    "ZoomOut": MotionSpec("zoom", (-1.0, 0.0)),
    "ShakeHorizontal": MotionSpec("oscillate", (1.0, 0.0)),
    "ShakeVertical": MotionSpec("oscillate", (0.0, 1.0)),
    "Static": MotionSpec("static"),
}


# --------------------------------------------------------------------------- rendering
class MotionClip(NamedTuple):
    """One rendered clip.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB frames.
        tracks: float32 ``[1, T, 3]`` object track ``(x, y, scale)``: centre in pixels, scale
            relative to the object's base size.
        mask: bool ``[T, H, W]``, True where the moving object covers a pixel (more than half).
    """

    frames: np.ndarray
    tracks: np.ndarray
    mask: np.ndarray


def _texture(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, base: np.ndarray, contrast: float
) -> np.ndarray:
    """Random colour texture (sum of oriented gratings) sampled on a separable grid.

    Args:
        rng: random generator.
        u: horizontal coordinates ``[T, 1, W]``.
        v: vertical coordinates ``[T, H, 1]``.
        base: mean colour ``[3]``.
        contrast: amplitude of each grating's colour.

    Returns:
        float32 ``[3, T, H, W]`` in [0, 1] (channel-first: faster to build and blend).
    """
    count = int(rng.integers(2, 4))
    waves = np.empty((count,) + np.broadcast_shapes(u.shape, v.shape), dtype=np.float32)
    colours = np.empty((count, 3), dtype=np.float32)
    for g in range(count):
        theta = rng.uniform(0, math.pi)
        freq = 2 * math.pi * rng.uniform(1.0, 4.0)
        phase = rng.uniform(0, 2 * math.pi)
        colours[g] = rng.uniform(-contrast, contrast, size=3)
        a = np.float32(freq * math.cos(theta)) * u
        b = np.float32(freq * math.sin(theta)) * v + np.float32(phase)
        # sin(a + b) from 1-D sines: the grid is separable, so no per-pixel sin is needed
        np.add(np.sin(a) * np.cos(b), np.cos(a) * np.sin(b), out=waves[g])
        if rng.random() < 0.4:
            np.sign(waves[g], out=waves[g])  # stripes / checks: hard edges survive compression
    out = np.empty((3,) + waves.shape[1:], dtype=np.float32)  # channel-first: [3, T, H, W]
    for c in range(3):
        np.multiply(waves[0], colours[0, c], out=out[c])
        out[c] += np.float32(base[c])
        for g in range(1, count):
            out[c] += colours[g, c] * waves[g]
    return np.clip(out, 0.0, 1.0, out=out)


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a unit shape (radius 1) at object coordinates (u, v)."""
    if kind == 0:
        dist = np.sqrt(u * u + v * v)  # disk
    elif kind == 1:
        dist = np.maximum(np.abs(u), np.abs(v))  # square
    elif kind == 2:
        dist = np.abs(u) + np.abs(v)  # diamond
    else:
        r = np.sqrt(u * u + v * v)  # ring
        dist = 0.45 + np.abs(r - 0.55)
    return np.clip((1.0 - dist) / soft + 0.5, 0.0, 1.0)


#: Placement drawn the same way for every class (fractions of the frame side, of the free width, of the clip).
_BASE_RADIUS = (0.11, 0.14)  # the object's radius at scale 1, x frame side
_SCALE_RATIO = (3.5, 4.5)  # largest / smallest radius a zoom sweeps; every kind draws it
_SWEEP = (0.7, 1.0)  # how far along an axis a translation, shake or circle goes, x the free width
_SHAKE_CYCLES = (2.0, 10.0 / 3.0)  # back-and-forth cycles over a clip (a period of 30-50 % of it)
_CIRCLE_TURNS = (0.7, 1.0)


def _triangle(z: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1 between 0 and 1: at a uniformly random phase its value is uniform."""
    return 1.0 - np.abs(2.0 * np.mod(z, 1.0) - 1.0)


def _axis_progress(
    spec: MotionSpec, axis: int, phase: float, frac: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Where along its sweep (0..1) the object is on one axis (0: x, 1: y), frame by frame."""
    d = spec.direction[axis]
    if spec.kind == "translate" and d != 0:
        return frac if d > 0 else 1.0 - frac
    if spec.kind == "oscillate" and d != 0:
        return _triangle(phase + rng.uniform(*_SHAKE_CYCLES) * frac)
    return np.full_like(frac, phase)


def _trajectory(
    spec: MotionSpec, rng: np.random.Generator, t: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Centre x, centre y (pixels) and scale per frame of the object, and its radius at scale 1.

    One placement serves every kind, so a single frame's object position and size say nothing of the
    class. Every clip draws a base radius, a scale ratio, and per axis a sweep (a share of the width
    the object can use while staying inside the frame at its largest), an offset and a phase. The
    motion only decides how the object runs through its sweep: a translation ramps along its moving
    axis, a shake runs a triangle wave from a random phase, every other axis stays at its phase; a
    zoom ramps the log-scale, the other kinds hold it at a random level. At a uniformly random frame
    the progress along each axis and the log-scale are uniform for every one of these kinds, so
    ``(x, y, scale)`` has the same distribution for all of them. Circles (an ellipse through the
    sweep box) and diagonal translations share the ranges but not the exact distribution, and
    ``speed`` > 1 lengthens a translation's sweep beyond the free width: it enters or leaves the frame.
    """
    if spec.kind not in ("translate", "circle", "zoom", "oscillate", "static"):
        raise ValueError(f"unknown motion kind '{spec.kind}'")
    # frame midpoints: a ramp over them is as spread as a uniform draw (frame 0 to 1 would be 3 % wider)
    frac = (t + 0.5) / len(t)
    radius = float(rng.uniform(*_BASE_RADIUS) * size)
    ratio = float(rng.uniform(*_SCALE_RATIO))
    margin = radius * math.sqrt(ratio) + 1.0  # the largest radius any kind can reach, plus a pixel
    free = size - 2.0 * margin
    share = rng.uniform(*_SWEEP, size=2)
    if spec.kind == "translate":
        share = np.where(np.asarray(spec.direction) != 0, share * spec.speed, share)
    sweep = share * free
    # a sweep longer than the free width (speed > 1) overhangs it at both ends by a random split
    offset = margin + rng.uniform(0.0, 1.0, size=2) * (free - sweep)
    phase = rng.uniform(0.0, 1.0, size=2)
    level = np.full_like(frac, rng.uniform(0.0, 1.0))  # where the log-scale sits in its range
    if spec.kind == "circle":
        angle = 2 * math.pi * (phase[0] + spec.direction[0] * rng.uniform(*_CIRCLE_TURNS) * frac)
        progress = [0.5 + 0.5 * np.cos(angle), 0.5 + 0.5 * np.sin(angle)]
    else:
        progress = [_axis_progress(spec, axis, float(phase[axis]), frac, rng) for axis in (0, 1)]
    if spec.kind == "zoom":
        level = frac if spec.direction[0] > 0 else 1.0 - frac
    x, y = (offset[axis] + sweep[axis] * progress[axis] for axis in (0, 1))
    scale = ratio ** (level - 0.5)
    return x.astype(np.float32), y.astype(np.float32), scale.astype(np.float32), radius


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random background and object colours on opposite sides of mid-grey, so the object stands out."""
    dark, bright = (0.1, 0.35), (0.65, 0.9)
    bg_range, obj_range = (dark, bright) if rng.random() < 0.5 else (bright, dark)
    return rng.uniform(*bg_range, size=3).astype(np.float32), rng.uniform(*obj_range, size=3).astype(np.float32)


def render_motion_clip(
    motion: str | MotionSpec, rng: np.random.Generator, num_frames: int = 32, size: int = 64
) -> MotionClip:
    """Render one clip of a motion class with random appearance.

    One textured object moves over a static, low-contrast textured background; the object's
    colour lies on the other side of mid-grey than the background's. Shape, size, textures,
    colours, position and noise level are random per clip; only the motion depends on the class.

    Args:
        motion: a name from :data:`MOTION_CLASSES` or a :class:`MotionSpec`.
        rng: numpy generator that decides every random choice.
        num_frames: clip length T.
        size: frame side (square frames, even for H.264).

    Returns:
        The frames, the object track and the true object mask (:class:`MotionClip`).
    """
    spec = MOTION_CLASSES[motion] if isinstance(motion, str) else motion
    t = np.arange(num_frames, dtype=np.float32)
    xs = np.arange(size, dtype=np.float32)[None, None, :]  # [1, 1, W]
    ys = np.arange(size, dtype=np.float32)[None, :, None]  # [1, H, 1]
    bg_colour, obj_colour = _contrasting_colours(rng)
    frames = np.broadcast_to(_texture(rng, xs / size, ys / size, bg_colour, 0.06), (3, num_frames, size, size)).copy()
    cx, cy, scale, radius = _trajectory(spec, rng, t, size)
    r = radius * scale[:, None, None]
    u = (xs - cx[:, None, None]) / r  # [T, 1, W]
    v = (ys - cy[:, None, None]) / r  # [T, H, 1]
    coverage = _shape_mask(int(rng.integers(0, 4)), u, v, 1.5 / r)  # [T, H, W]
    # the texture is attached to the object: it moves and zooms with it
    tex = _texture(rng, u * (2 * radius / size), v * (2 * radius / size), obj_colour, 0.15)
    frames += coverage[None] * (tex - frames)
    frames += rng.standard_normal((1,) + frames.shape[1:], dtype=np.float32) * np.float32(rng.uniform(0.0, 0.02))
    np.clip(frames, 0.0, 1.0, out=frames)
    frames = (frames * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
    track = np.stack([cx, cy, scale], axis=1)[None]
    return MotionClip(np.ascontiguousarray(frames.transpose(1, 2, 3, 0)), track, coverage > 0.5)


# --------------------------------------------------------------------------- data set writing
def _clip_rng(seed: int, name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index])


def _video_relpath(name: str, index: int, suffix: str) -> str:
    return f"{name}/v_{name}_g{index + 1:02d}_c01{suffix}"


def _write_one(job: tuple[str, str, int, int, int, int, int, str]) -> str:
    """Render and encode one clip (module-level so process pools can pickle it)."""
    root, name, index, seed, num_frames, size, fps, suffix = job
    frames = render_motion_clip(name, _clip_rng(seed, name, index), num_frames, size).frames
    rel = _video_relpath(name, index, suffix)
    out = Path(root) / "UCF-101" / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, frames, fps=fps, codec="libx264", gop=max(1, min(16, num_frames)), bframes=2,
                options={"preset": "ultrafast", "crf": "18", "threads": "1"})
    return rel


def _test_indices(videos_per_class: int, test_fraction: float, split: int) -> set[int]:
    """Test-set clip indices of one class for ``split`` (1-3): a rotating block."""
    n_test = int(round(videos_per_class * test_fraction))
    if test_fraction > 0 and videos_per_class > 1:
        n_test = min(max(n_test, 1), videos_per_class - 1)
    start = (split - 1) * n_test
    return {(start + k) % videos_per_class for k in range(n_test)}


def write_motion_dataset(
    root: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    videos_per_class: int = 20,
    num_frames: int = 32,
    size: int = 64,
    seed: int = 0,
    test_fraction: float = 0.25,
    workers: int = 0,
    fps: int = 25,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Render and encode a motion data set in the UCF101 layout.

    If ``root`` already holds a data set generated with identical parameters it is
    reused as is (unless ``overwrite``).

    Args:
        root: output directory (created).
        classes: class names from :data:`MOTION_CLASSES` (None: all of them).
        videos_per_class: clips per class.
        num_frames: frames per clip.
        size: frame side in pixels (even).
        seed: generation seed.
        test_fraction: fraction of each class in the test list of every split.
        workers: processes for rendering + encoding (0: in this process).
        fps: frame rate written into the files.
        overwrite: regenerate even when a matching data set exists.
        progress: show a tqdm progress bar.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unknown class names or invalid sizes.
    """
    root = Path(root)
    names = list(MOTION_CLASSES) if classes is None else list(classes)
    unknown = [c for c in names if c not in MOTION_CLASSES]
    if unknown:
        raise ValueError(f"unknown motion classes {unknown}; choose from {sorted(MOTION_CLASSES)}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"classes must be a non-empty list without repeats, got {names}")
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even number >= 8 (H.264 needs even sides), got {size}")
    if num_frames < 1 or videos_per_class < 1:
        raise ValueError("num_frames and videos_per_class must be >= 1")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    params = {
        "version": _FORMAT_VERSION,
        "classes": names,
        "videos_per_class": videos_per_class,
        "num_frames": num_frames,
        "size": size,
        "seed": seed,
        "test_fraction": test_fraction,
        "fps": fps,
    }
    meta_path = root / _META_NAME
    if not overwrite and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")) == params:
                _logger.info("reusing motion data set at %s", root)
                return root
        except (OSError, json.JSONDecodeError):
            pass
    root.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        meta_path.unlink()  # invalid until the new set is complete
    suffix = ".mp4"
    jobs = [
        (str(root), name, j, seed, num_frames, size, fps, suffix) for name in names for j in range(videos_per_class)
    ]
    bar = tqdm(total=len(jobs), desc="motion videos", unit="video", disable=not progress)
    if workers > 0:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                bar.update()
    else:
        for job in jobs:
            _write_one(job)
            bar.update()
    bar.close()
    lists = root / "ucfTrainTestlist"
    lists.mkdir(exist_ok=True)
    atomic_write_text(lists / "classInd.txt", "".join(f"{i + 1} {name}\n" for i, name in enumerate(names)))
    for split in (1, 2, 3):
        train_lines, test_lines = [], []
        for ci, name in enumerate(names):
            test = _test_indices(videos_per_class, test_fraction, split)
            for j in range(videos_per_class):
                rel = _video_relpath(name, j, suffix)
                if j in test:
                    test_lines.append(f"{rel}\n")
                else:
                    train_lines.append(f"{rel} {ci + 1}\n")
        atomic_write_text(lists / f"trainlist0{split}.txt", "".join(train_lines))
        atomic_write_text(lists / f"testlist0{split}.txt", "".join(test_lines))
    atomic_write_text(meta_path, json.dumps(params, indent=2) + "\n")
    _logger.info("wrote %d motion videos (%d classes) to %s", len(jobs), len(names), root)
    return root


def dataset_clip(root: str | os.PathLike[str], video: str | os.PathLike[str]) -> MotionClip:
    """Render again, exactly, the clip behind one video of a data set made by :func:`write_motion_dataset`.

    The encoded file holds only (compressed) frames; this returns the uncompressed frames, the
    object track and the true object mask, e.g. to score a model's foreground mask.

    Args:
        root: the data set folder (holds ``motion.json``).
        video: the video's path, absolute or relative to ``root/UCF-101``.

    Returns:
        The :class:`MotionClip` the video was encoded from.

    Raises:
        FileNotFoundError: ``root`` holds no complete motion data set.
        ValueError: the path is not a video of this data set.
    """
    root = Path(root)
    meta_path = root / _META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} holds no {_META_NAME}; generate it with write_motion_dataset first")
    params = json.loads(meta_path.read_text(encoding="utf-8"))
    path = Path(video)
    name = path.parent.name
    stem = path.stem
    prefix = f"v_{name}_g"
    if name not in params["classes"] or not stem.startswith(prefix) or not stem.endswith("_c01"):
        raise ValueError(f"{video} is not a video of the motion data set at {root} (classes {params['classes']})")
    index = int(stem[len(prefix):-len("_c01")]) - 1
    if not 0 <= index < int(params["videos_per_class"]):
        raise ValueError(f"{video}: clip index {index + 1} is outside 1..{params['videos_per_class']}")
    rng = _clip_rng(int(params["seed"]), name, index)
    return render_motion_clip(name, rng, int(params["num_frames"]), int(params["size"]))
