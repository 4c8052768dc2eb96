"""``fima-models extract``: features of many videos, resumable, with decoding in worker processes.

::

    fima-models extract videos/ more.mp4 list.txt --model r2plus1d_18 --out feats/ --level clip

This module only parses and checks the options; the work is
:func:`fima_models.extract.run_extraction` (inputs, workers, outputs, summary and torchrun are
described in :mod:`fima_models.extract.batch` and ``docs/features.md``).
"""
import argparse
import logging
import math
from pathlib import Path

from fima_models._utils import PRECISIONS
from fima_models.extract import CROP_COUNTS, CROP_POOLS, FORMATS, LEVELS, POOLINGS, ExtractionSettings, run_extraction
from fima_models.extract.summary import SUMMARY_NAME

__all__ = ['add_parser', 'run', 'settings_from_args']

_logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Extract clip, video or dense features of videos with a fima-models backbone.

INPUT: video files, folders (searched recursively for video files) or text files (.txt, .lst,
.list) listing one video path per line. Each video gets DIR/<its path below its input root> with
the suffix replaced by .npy or .safetensors, plus a .json sidecar with the clip frames and times.
DIR/summary.json lists every input as ok, failed (with the reason) or skipped (already finished);
running the same command again skips finished videos. Exit status 1 when any input failed.
Multi-GPU: torchrun --nproc-per-node N -m fima_models.cli extract ... --device cuda
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``extract`` to the ``fima-models`` command line."""
    parser = subparsers.add_parser(
        'extract', help='extract clip, video or dense features of videos',
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='video files, folders or text files listing videos')
    parser.add_argument('--model', required=True, metavar='NAME_OR_DIR',
                        help='model name or alias, hf-hub:/local-dir: source, or a converted model folder')
    parser.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                        help='load the pretrained weights of a named model (default: yes)')
    parser.add_argument('--out', required=True, type=Path, metavar='DIR', help='output folder')
    parser.add_argument('--clip-len', type=int, default=16, help='frames per clip (default: 16)')
    parser.add_argument('--stride', type=int, default=16, help='frames between clip starts (default: 16)')
    parser.add_argument('--step', type=int, default=1, help='frames between the frames of a clip (default: 1)')
    parser.add_argument('--fps', type=float, default=None, help='resample videos to this frame rate first')
    parser.add_argument('--size', type=int, default=None, help='crop size (default: from the model config)')
    parser.add_argument('--level', choices=LEVELS, default='clip', help='feature level (default: clip)')
    parser.add_argument('--spatial-pool', choices=POOLINGS, default=None, help='pooling over H, W (default: avg)')
    parser.add_argument('--temporal-pool', choices=POOLINGS, default=None, help='pooling over T (default: avg)')
    parser.add_argument('--layer', type=int, default=None,
                        help='intermediate block to read (forward_intermediates index; default: final map)')
    parser.add_argument('--crops', type=int, choices=CROP_COUNTS, default=1,
                        help='views per clip: 1 centre crop (default), 3 along the long side, 10 = the four corners '
                             'and the centre, then their horizontal flips; boxes go in each sidecar')
    parser.add_argument('--crop-pool', choices=CROP_POOLS, default='keep',
                        help='keep the crops axis after the clips axis (default) or average over the crops')
    parser.add_argument('--format', choices=FORMATS, default='npy', help='feature file format (default: npy)')
    parser.add_argument('--batch-size', type=int, default=8,
                        help='clips per forward pass; with --crops, views per pass (default: 8)')
    parser.add_argument('--workers', type=int, default=2, help='decoding worker processes (default: 2)')
    parser.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32',
                        help='fp32 (default), bf16 (bfloat16 autocast; refused where the hardware would emulate '
                             'it) or auto (bf16 where the hardware computes it natively, else fp32); fp32 on '
                             'hardware with native bf16 logs a hint')
    parser.add_argument('--channels-last', action='store_true', help='channels-last-3d memory format')
    parser.add_argument('--optimize', action=argparse.BooleanOptionalAction, default=True,
                        help='measured fast inference path: BatchNorm folding, memory format, factorised convs '
                             'and, on Linux/glibc CPUs, an allocator that keeps freed buffers (default: on)')
    parser.add_argument('--overwrite', action='store_true', help='extract again even if an output is finished')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name in ('clip_len', 'stride', 'step', 'batch_size'):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise ValueError(f'--workers must be >= 0, got {args.workers}')
    if args.size is not None and args.size < 1:
        raise ValueError(f'--size must be >= 1, got {args.size}')
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f'--fps must be a positive frame rate such as 25 or 29.97, got {args.fps}; '
                         'omit it to keep every frame of the video')
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out '{args.out}' exists and is not a folder; choose another output folder")


def settings_from_args(args: argparse.Namespace) -> ExtractionSettings:
    """The checked options of ``fima-models extract`` as :class:`~fima_models.extract.ExtractionSettings`.

    Raises:
        ValueError: an option is out of range (named with its flag).
    """
    _check_args(args)
    return ExtractionSettings(
        inputs=args.inputs, out=args.out, model=args.model, pretrained=args.pretrained, clip_len=args.clip_len,
        stride=args.stride, step=args.step, fps=args.fps, size=args.size, level=args.level,
        spatial_pool=args.spatial_pool, temporal_pool=args.temporal_pool, layer=args.layer, crops=args.crops,
        crop_pool=args.crop_pool, format=args.format,
        batch_size=args.batch_size, workers=args.workers, device=args.device, precision=args.precision,
        channels_last=args.channels_last, optimize=args.optimize, overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``fima-models extract``; returns 0 when no input failed (and the summary was written), else 1.

    Raises:
        ValueError: invalid options (before any work).
        RuntimeError: ``--out`` cannot be created or written, or another run is writing into it.
    """
    outcome = run_extraction(settings_from_args(args))
    summary = outcome.summary
    if summary is None:  # a rank other than 0: rank 0 reports for everyone
        return 1 if outcome.failed else 0
    counts = summary['counts']
    print(f"extracted {counts['ok']} video(s), skipped {counts['skipped']}, failed {counts['failed']}; "
          f"{summary['clips']} clips in {summary['elapsed_seconds']:.1f} s "
          f"({summary['clips_per_second']:.1f} clips/s); "
          + (f'summary: {args.out / SUMMARY_NAME}' if outcome.summary_written else 'the summary could not be written'))
    for entry in summary['videos']:
        if entry['status'] == 'failed':
            _logger.error("failed: '%s': %s", entry['input'], entry['reason'])
    return 1 if outcome.failed or not outcome.summary_written else 0
