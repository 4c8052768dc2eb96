"""Throughput of ``fima-models extract`` against the model alone.

The extraction pipeline decodes and transforms clips in DataLoader workers while the model runs,
so its end-to-end clips/s should come close to the clips/s of the model on ready-made batches of
the same shape. This script generates a folder of H.264 videos, measures

* ``model``: clips/s of :class:`fima_models.extract.FeatureRunner` on ready, transformed batches
  (the same runner, batch size, clip shape, device and precision the command uses), measured
  before and after the end-to-end run and averaged, after warm-up iterations;
* ``extract``: clips/s of ``fima-models extract`` (run as its own process, as a user would) on the
  folder, from its summary: from the start of the decoding workers to the last output written
  (worker start-up, decoding, transforms, moving the model to the device, model, pooling, writing;
  not the interpreter start and the model construction);

and reports ``extract / model``. The acceptance bar is 0.8. Run from the repository root::

    python benchmarks/extract.py --models r2plus1d_18 i3d --videos 4 --frames 64 --workers 2
    python benchmarks/extract.py --device cuda --videos 32 --frames 160 --workers 12 --batch-size 32

Results are printed as a markdown table and written as JSON with the machine and versions.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fima_models._utils import PRECISIONS  # noqa: E402
from fima_models.extract import build_transform, clip_starts, load_model, prepare_inference, read_clip  # noqa: E402
from fima_models.video import VideoReader, write_video  # noqa: E402


def moving_pattern(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 ``[frames, height, width, 3]``: a seeded colour pattern that drifts, so every frame differs."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(1.0, 4.0, size=(3, 2)).astype(np.float32)
    t = np.arange(frames, dtype=np.float32)[:, None, None, None] / 16
    y = np.linspace(0, 2 * np.pi, height, dtype=np.float32)[None, :, None, None]
    x = np.linspace(0, 2 * np.pi, width, dtype=np.float32)[None, None, :, None]
    wave = np.sin(freq[:, 0] * (x + t) + freq[:, 1] * y)  # broadcasts over the 3 channels
    return ((wave + 1) * 127.5).astype(np.uint8)


def make_videos(folder: Path, count: int, frames: int, height: int, width: int, fps: int) -> List[Path]:
    """Write ``count`` H.264 videos of ``frames`` frames (each with its own content)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f'video_{i:03d}.mp4', moving_pattern(frames, height, width, seed=i), fps=fps, gop=32)
            for i in range(count)]


def model_only_clips_per_second(runner: Any, batch: torch.Tensor, iters: int, warmup: int) -> float:
    """Clips/s of ``runner`` (with the same pooling work as the command) on one ready batch."""
    def step() -> None:
        maps = runner(batch)
        maps.mean(dim=(2, 3, 4)).cpu()

    for _ in range(warmup):
        step()
    if runner.device.type == 'cuda':
        torch.cuda.synchronize(runner.device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if runner.device.type == 'cuda':
        torch.cuda.synchronize(runner.device)
    return iters * batch.shape[0] / (time.perf_counter() - start)


def bench_model(name: str, args: argparse.Namespace, videos: List[Path], work: Path) -> Dict[str, Any]:
    """Model-only and end-to-end throughput of one model."""
    model = load_model(name, pretrained=False)
    transform = build_transform(model, size=args.size)
    runner = prepare_inference(model, device=args.device, precision=args.precision, channels_last=args.channels_last)
    reader = VideoReader(videos[0])
    starts = list(clip_starts(reader.num_frames, args.clip_len, args.clip_len))[:args.batch_size]
    clips = [read_clip(reader, start, args.clip_len)[0] for start in starts]
    batch = transform(torch.stack([clips[i % len(clips)] for i in range(args.batch_size)]))
    if runner.device.type == 'cuda':
        batch = batch.pin_memory()
    before = model_only_clips_per_second(runner, batch, args.iters, args.warmup)

    out = work / f'out_{name}'
    argv = [str(work / 'videos'), '--model', name, '--no-pretrained', '--out', str(out), '--overwrite',
            '--clip-len', str(args.clip_len), '--stride', str(args.clip_len), '--size', str(args.size),
            '--batch-size', str(args.batch_size), '--workers', str(args.workers), '--precision', args.precision,
            '--no-progress']
    if args.device:
        argv += ['--device', args.device]
    if args.channels_last:
        argv.append('--channels-last')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, '-m', 'fima_models.cli', 'extract', *argv], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f'fima-models extract failed on the benchmark videos:\n{proc.stdout}\n{proc.stderr}')
    summary = json.loads((out / 'summary.json').read_text())

    after = model_only_clips_per_second(runner, batch, args.iters, args.warmup)
    model_cps = (before + after) / 2
    extract_cps = summary['clips_per_second']
    return {
        'model': name, 'clips': summary['clips'], 'batch_size': args.batch_size,
        'clip': f'{args.clip_len}x{args.size}', 'model_clips_per_s_before': before,
        'model_clips_per_s_after': after, 'model_clips_per_s': model_cps, 'extract_clips_per_s': extract_cps,
        'extract_process_wall_s': wall, 'ratio': extract_cps / model_cps,
    }


def machine_info(device: str) -> Dict[str, Any]:
    """CPU, GPU and library versions of this run."""
    import av
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        'cpu': cpu, 'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
        'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
        'av': av.__version__, 'device': device,
    }
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
    return info


def main(argv: List[str] | None = None) -> int:
    """Run the benchmark; returns 1 when a model's ratio is below ``--min-ratio``."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=['r2plus1d_18', 'i3d'])
    parser.add_argument('--videos', type=int, default=4, help='number of generated videos')
    parser.add_argument('--frames', type=int, default=64, help='frames per video')
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=170)
    parser.add_argument('--clip-len', type=int, default=16)
    parser.add_argument('--size', type=int, default=112)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--device', default=None)
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--iters', type=int, default=3, help='timed model-only batches (each side)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--min-ratio', type=float, default=0.8)
    parser.add_argument('--json', type=Path, default=None, help='also write the results here')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')

    with tempfile.TemporaryDirectory(prefix='fima-extract-bench-') as tmp:
        work = Path(tmp)
        videos = make_videos(work / 'videos', args.videos, args.frames, args.height, args.width, fps=25)
        results = [bench_model(name, args, videos, work) for name in args.models]

    info = machine_info(args.device)
    print(f"machine: {info['cpu']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch threads)"
          f"{', ' + info['gpu'] if 'gpu' in info else ''}; python {info['python']}, torch {info['torch']}, "
          f"timm {info['timm']}, av {info['av']}")
    print(f'{args.videos} videos x {args.frames} frames {args.width}x{args.height}, batch {args.batch_size}, '
          f'{args.workers} workers, device {args.device}, precision {args.precision}')
    print('| model | clip | clips | model-only clips/s | extract clips/s | ratio |')
    print('|---|---|---|---|---|---|')
    for r in results:
        print(f"| {r['model']} | {r['clip']} | {r['clips']} | {r['model_clips_per_s']:.2f} "
              f"| {r['extract_clips_per_s']:.2f} | {r['ratio']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({'machine': info, 'settings': vars(args) | {'json': str(args.json)},
                                         'results': results}, indent=1, default=str))
    return 0 if all(r['ratio'] >= args.min_ratio for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
