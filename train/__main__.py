"""``python -m train COMMAND ...``: one sub-command parser per command, as ``fima-models`` builds its own.

Each module named in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
commands and sets ``func(args) -> int`` as their handler.
"""
import argparse
import importlib
import sys
from typing import Any, List, Optional

__all__ = ['main', 'build_parser', 'COMMAND_MODULES']

COMMAND_MODULES = (
    'train.pretrain',      # pretrain
    'train.downstream',    # finetune, linear, retrieval, test
    'train.summarize',     # summarize
)


def _register_demo(subparsers: Any) -> None:
    """``demo``, whose module builds its own parser: the arguments reach ``train.demo.main`` as they are.

    (Once :mod:`train.demo` exposes ``register`` it joins :data:`COMMAND_MODULES` and this goes.)
    """
    from train import demo

    # no option prefix: every argument, '--out' and '-h' included, is left for the demo's own parser
    parser = subparsers.add_parser('demo', help='the end-to-end demo (python -m train demo --help)', add_help=False,
                                   prefix_chars='\0')
    parser.add_argument('argv', nargs='*')
    parser.set_defaults(func=lambda args: demo.main(args.argv))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m train`` parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog='python -m train',
        description='Pretraining (FIMA, MoCo), the downstream recipes, result tables and the demo.',
    )
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    _register_demo(subparsers)
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
