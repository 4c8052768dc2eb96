"""Data-loading throughput: seek-based clip sampling vs decoding whole files.

Generates web-like test videos (320x240, 25 fps, a keyframe every 2 s, H.264 with
B-frames) of 10 s and 60 s, then measures clips/s of decode + sample + augment
(``RandomClipSampler(16, step=2)`` + ``TrainTransform(112)``) through a DataLoader
with 0, 1 and 2 workers, and the same clips when every video is decoded whole
first (the naive loader). Also times the pieces: opening a reader (packet index),
one ``get_clip``, the exact probe of the data set index (demux + decode pass), a
whole-file decode, and RGB conversion with ``to_ndarray`` per frame vs one reused
``VideoReformatter``.

Usage::

    python -m benchmarks.data_loading --out benchmarks/results/data_loading.json

Not a test: it takes minutes and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import DataLoader, RandomSampler

from fima_models._utils import atomic_write_text
from fima_models.data import RandomClipSampler, VideoDataset
from fima_models.data.samplers import ClipSampler
from fima_models.transforms import TrainTransform
from fima_models.video import VideoReader, probe_video, write_video

_logger = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS, GOP_SECONDS = 320, 240, 25, 2


def synthetic_frames(num_frames: int, seed: int) -> Iterator[np.ndarray]:
    """Stream frames of a panning textured scene with a moving block (web-video-like motion)."""
    rng = np.random.default_rng(seed)
    canvas_h, canvas_w = HEIGHT * 2, WIDTH * 2
    ys, xs = np.mgrid[0:canvas_h, 0:canvas_w].astype(np.float32)
    canvas = np.stack([128 + 100 * np.sin(xs / rng.uniform(8, 30) + ys / rng.uniform(8, 30) + c) for c in range(3)],
                      axis=-1)
    canvas = np.clip(canvas + rng.normal(0, 12, canvas.shape), 0, 255).astype(np.uint8)
    for t in range(num_frames):
        y0 = int((HEIGHT / 2) * (1 + np.sin(t / 90.0)))
        x0 = int((WIDTH / 2) * (1 + np.cos(t / 70.0)))
        frame = canvas[y0 : y0 + HEIGHT, x0 : x0 + WIDTH].copy()
        by, bx = (t * 3) % (HEIGHT - 40), (t * 5) % (WIDTH - 40)
        frame[by : by + 40, bx : bx + 40] = (t * 7) % 256
        yield frame


def make_videos(folder: Path, seconds: int, count: int) -> list[Path]:
    """Encode (once, cached) ``count`` videos of ``seconds`` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{seconds}s_{i}.mp4"
        if not path.exists():
            _logger.info("encoding %s", path)
            write_video(path, synthetic_frames(seconds * FPS, seed=seconds * 100 + i), fps=FPS, codec="libx264",
                        gop=GOP_SECONDS * FPS, bframes=2, options={"preset": "veryfast", "crf": "23"})
        paths.append(path)
    return paths


class WholeFileSampler(ClipSampler):
    """Baseline: the same clip indices, but every video is decoded completely first."""

    def __init__(self, inner: ClipSampler) -> None:
        self.inner = inner

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        return self.inner.indices(num_frames, generator)

    def __call__(self, reader: VideoReader, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = self.indices(reader.num_frames, generator)
        with av.open(str(reader.path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        return torch.from_numpy(np.stack([frames[i] for i in idx.reshape(-1)])).reshape(*idx.shape, HEIGHT, WIDTH, 3)


def loader_rate(paths: list[Path], sampler: ClipSampler, workers: int, clips: int, batch: int) -> dict[str, float]:
    """Clips/s through a DataLoader (worker start-up included)."""
    ds = VideoDataset([(p, 0) for p in paths], ["video"], sampler=sampler, transform=TrainTransform(112), seed=0)
    order = RandomSampler(ds, replacement=True, num_samples=clips, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch, sampler=order, num_workers=workers)
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    wall = time.perf_counter() - start
    return {"clips": n, "seconds": round(wall, 3), "clips_per_s": round(n / wall, 3)}


def pieces(path: Path) -> dict[str, float]:
    """Timings of the reader's building blocks on one video."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    reader = VideoReader(path, threads=1)
    out["open_and_index_ms"] = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    probe_video(path)
    out["probe_video_s"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    starts = rng.integers(0, reader.num_frames - 32, size=8)
    t = time.perf_counter()
    for s in starts:
        reader.get_clip(int(s), 16, 2)
    out["get_clip_16x2_ms"] = 1000 * (time.perf_counter() - t) / len(starts)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        decoded = []
        t = time.perf_counter()
        for frame in container.decode(stream):
            decoded.append(frame)
            if len(decoded) == 200:
                break
        out["decode_only_ms_per_frame"] = 1000 * (time.perf_counter() - t) / len(decoded)
    t = time.perf_counter()
    for f in decoded:
        f.to_ndarray(format="rgb24")
    out["to_ndarray_rgb24_ms_per_frame"] = 1000 * (time.perf_counter() - t) / len(decoded)
    reformatter = VideoReformatter()
    t = time.perf_counter()
    for f in decoded:
        reformatter.reformat(f, format="rgb24").to_ndarray()
    out["reused_reformatter_ms_per_frame"] = 1000 * (time.perf_counter() - t) / len(decoded)
    t = time.perf_counter()
    with av.open(str(path)) as container:
        n = sum(1 for f in container.decode(video=0) if f.to_ndarray(format="rgb24") is not None)
    out["whole_file_decode_s"] = time.perf_counter() - t
    out["frames"] = n
    return {k: round(v, 3) for k, v in out.items()}


def cpu_description() -> dict[str, Any]:
    """CPU model and whether it has bf16 instructions (from /proc/cpuinfo; empty elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {"cpu_model": model, "bf16_flags": [f for f in ("amx_bf16", "avx512_bf16") if f in flags]}


def environment() -> dict[str, Any]:
    """Machine and library versions for the record."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **cpu_description(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pyav": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video-dir", type=Path, default=Path("/tmp/fima-bench-videos"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_loading.json"))
    parser.add_argument("--videos", type=int, default=3, help="videos per duration")
    parser.add_argument("--durations", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clips", type=int, default=48, help="clips per seek-based run")
    parser.add_argument("--baseline-clips", type=int, default=8, help="clips per whole-file run")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    result: dict[str, Any] = {"environment": environment(), "config": {
        "resolution": f"{WIDTH}x{HEIGHT}", "fps": FPS, "keyframe_every_s": GOP_SECONDS, "codec": "h264 (libx264, B-frames)",
        "sampler": "RandomClipSampler(16, step=2)", "transform": "TrainTransform(112)", "batch_size": args.batch_size,
        "decoder_threads": 1, "torch_threads_main": 1}, "runs": [], "pieces": {}}
    for seconds in args.durations:
        paths = make_videos(args.video_dir, seconds, args.videos)
        result["pieces"][f"{seconds}s"] = pieces(paths[0])
        _logger.info("%ss pieces: %s", seconds, result["pieces"][f"{seconds}s"])
        for workers in args.workers:
            for method, sampler, clips in [("seek", RandomClipSampler(16, step=2), args.clips),
                                           ("whole-file", WholeFileSampler(RandomClipSampler(16, step=2)),
                                            args.baseline_clips)]:
                rate = loader_rate(paths, sampler, workers, clips, args.batch_size)
                row = {"video_seconds": seconds, "workers": workers, "method": method, **rate}
                result["runs"].append(row)
                _logger.info("%s", row)
    for seconds in args.durations:
        for workers in args.workers:
            rows = {r["method"]: r for r in result["runs"] if r["video_seconds"] == seconds and r["workers"] == workers}
            rows["seek"]["speedup_vs_whole_file"] = round(rows["seek"]["clips_per_s"] / rows["whole-file"]["clips_per_s"], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    return 0


def markdown_table(result: dict[str, Any]) -> str:
    """The runs as a markdown table (as pasted into docs/data.md)."""
    lines = ["| video | workers | seek clips/s | whole-file clips/s | speed-up |", "|---|---|---|---|---|"]
    runs = result["runs"]
    for r in runs:
        if r["method"] != "seek":
            continue
        base = next(b for b in runs if b["method"] == "whole-file" and b["video_seconds"] == r["video_seconds"]
                    and b["workers"] == r["workers"])
        lines.append(f"| {r['video_seconds']} s | {r['workers']} | {r['clips_per_s']:.2f} | {base['clips_per_s']:.2f} "
                     f"| {r['speedup_vs_whole_file']}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
