"""``python -m train COMMAND ...``: one sub-command parser per command, as ``fima-models`` builds its own.

Each module named in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
commands and sets ``func(args) -> int`` as their handler. Unlike ``fima-models`` (one module per
command, see :mod:`fima_models.cli`), a module may add several commands: ``train.downstream``'s
four recipes share one argument set and one runner.
"""
import argparse
import importlib
import sys
from typing import List, Optional

__all__ = ['main', 'build_parser', 'COMMAND_MODULES']

COMMAND_MODULES = (
    'train.pretrain',      # pretrain
    'train.downstream',    # finetune, linear, retrieval, test
    'train.summarize',     # summarize
    'train.demo',          # demo
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m train`` parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog='python -m train',
        description='Pretraining (FIMA, MoCo), the downstream recipes, result tables and the demo.',
    )
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one training command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
