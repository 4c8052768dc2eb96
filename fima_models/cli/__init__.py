"""The ``fima-models`` command line: one sub-command module per command group.

Each module named in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
sub-commands and sets ``func(args) -> int`` as their handler.
"""
import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from fima_models._utils import describe_os_error

__all__ = ['main', 'build_parser']

COMMAND_MODULES = (
    'fima_models.cli.models',
    'fima_models.cli.weights',
    'fima_models.cli.extract',
    'fima_models.cli.check_videos',
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every command group registered."""
    from fima_models import __version__

    parser = argparse.ArgumentParser(
        prog='fima-models',
        description='Video backbones pretrained with FIMA: list, inspect, download, convert, extract features, '
                    'check videos.',
    )
    parser.add_argument('--version', action='version', version=f'fima-models {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='log debug messages')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='%(levelname)s %(name)s: %(message)s',
    )
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f'fima-models {args.command}: error: {err}', file=sys.stderr)
        return 1
    except OSError as err:
        print(f'fima-models {args.command}: error: {describe_os_error(err)}', file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`fima-models list | head`); silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f'fima-models {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
