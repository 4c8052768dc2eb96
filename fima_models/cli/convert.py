"""``fima-models convert SRC --model ARCH --out DIR``: a checkpoint into a folder ``local-dir:DIR`` loads.

Accepts FIMA, MoCo, torchvision, safetensors and ``python -m train`` checkpoints
(:func:`fima_models.convert.convert_checkpoint`).
"""
import argparse
import json
from typing import Any, Dict

from fima_models._utils import describe_os_error
from fima_models.convert import convert_checkpoint

__all__ = ['add_parser', 'run']


def run(args: argparse.Namespace) -> int:
    """Convert one checkpoint and print what was kept and dropped."""
    extra: Dict[str, Any] = {}
    for key in ('method', 'dataset'):
        if getattr(args, key):
            extra[key] = getattr(args, key)
    try:
        result = convert_checkpoint(
            args.src, args.model, args.out, keep_head=args.keep_head, tag=args.tag,
            pretrained_cfg=extra or None, overwrite=args.overwrite, keep_other_files=args.keep_other_files)
    except OSError as err:  # disk full, read-only, permission: one line naming the path
        raise RuntimeError(describe_os_error(err, args.out)) from err
    if args.json:
        print(json.dumps({
            'out_dir': str(result.out_dir), 'architecture': result.architecture, 'tag': result.tag,
            'format': result.format, 'num_classes': result.num_classes, 'in_chans': result.in_chans,
            'kept': result.kept, 'dropped': result.dropped,
        }, indent=2))
    else:
        print(result.summary())
        print(f"Load it with fima_models.create_model('local-dir:{result.out_dir}').")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``convert`` to the ``fima-models`` command line."""
    p = subparsers.add_parser(
        'convert', help='convert a checkpoint into a folder loadable with local-dir:DIR',
        description='Convert a FIMA / MoCo / torchvision / safetensors / python -m train checkpoint into '
                    'DIR/{model.safetensors,config.json,README.md}. Only the backbone is kept unless '
                    '--keep-head; the weights must load strictly into --model.')
    p.add_argument('src', metavar='SRC', help='checkpoint file')
    p.add_argument('--model', required=True, help='architecture (or arch.tag / alias), e.g. r2plus1d_18')
    p.add_argument('--out', required=True, metavar='DIR',
                   help='output folder: new or empty (see --overwrite and --keep-other-files)')
    p.add_argument('--keep-head', action='store_true', help="keep the checkpoint's classifier")
    p.add_argument('--tag', default=None, help='pretrained tag to record, e.g. fima_ucf101')
    p.add_argument('--method', default=None, help='pretraining method to record (fima, moco, supervised)')
    p.add_argument('--dataset', default=None, help='pretraining data set to record, e.g. ucf101')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the model.safetensors, config.json and README.md of an earlier conversion '
                        '(nothing else is touched)')
    p.add_argument('--keep-other-files', action='store_true',
                   help='allow an output folder that holds other files or the source checkpoint; '
                        'they are left untouched')
    p.add_argument('--json', action='store_true', help='print the result as JSON')
    return p
