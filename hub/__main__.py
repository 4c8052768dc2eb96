"""``python -m hub {export,publish}``: release tooling for the zoo's weights."""
import argparse
import logging
import sys
from typing import List, Optional

from fima_models._utils import describe_os_error
from hub.export import export_checkpoint
from hub.publish import publish

__all__ = ['main', 'build_parser']


def _export(args: argparse.Namespace) -> int:
    result = export_checkpoint(args.checkpoint, args.model, args.tag, args.out, results=args.results,
                               repo_id=args.repo_id, keep_head=args.keep_head, overwrite=args.overwrite,
                               keep_other_files=args.keep_other_files)
    print(result.conversion.summary())
    print(f'Wrote {result.out_dir}/SHA256SUMS ({len(result.manifest)} files) for {result.name} '
          f'-> hf-hub:{result.repo_id}')
    print(f'Next: python -m hub publish {result.out_dir} --repo-id {result.repo_id} --dry-run')
    return 0


def _publish(args: argparse.Namespace) -> int:
    plan = publish(args.folder, args.repo_id, dry_run=args.dry_run, private=args.private,
                   commit_message=args.message)
    print(plan.summary())
    if plan.dry_run:
        print('Dry run: the folder is valid and nothing was uploaded.')
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m hub`` argument parser."""
    parser = argparse.ArgumentParser(prog='python -m hub', description='Export and publish fima-models weights.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    p = sub.add_parser('export', help='checkpoint -> release folder (weights, config, card, SHA256SUMS)')
    p.add_argument('checkpoint', metavar='CKPT')
    p.add_argument('--model', required=True, help='architecture, e.g. r2plus1d_18')
    p.add_argument('--tag', required=True, help='pretrained tag, e.g. fima_ucf101')
    p.add_argument('--out', required=True, metavar='DIR')
    p.add_argument('--results', default=None, metavar='JSON', help='evaluation results for the card and config')
    p.add_argument('--repo-id', default=None, help='hub repo (default: the zoo repo of arch.tag)')
    p.add_argument('--keep-head', action='store_true', help="keep the checkpoint's classifier")
    p.add_argument('--overwrite', action='store_true', help='replace the files of an earlier export in DIR (only those)')
    p.add_argument('--keep-other-files', action='store_true',
                   help='write into a DIR that holds other files (they are left untouched)')
    p.set_defaults(func=_export)
    p = sub.add_parser('publish', help='validate a release folder and upload it to the Hugging Face hub')
    p.add_argument('folder', metavar='DIR')
    p.add_argument('--repo-id', required=True, help='ORG/NAME')
    p.add_argument('--dry-run', action='store_true', help='validate and list files; upload nothing')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--message', default=None, help='commit message')
    p.set_defaults(func=_publish)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``python -m hub``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OSError as err:
        print(f'python -m hub {args.command}: error: {describe_os_error(err)}', file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as err:
        print(f'python -m hub {args.command}: error: {err}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
