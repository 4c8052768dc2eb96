"""The ``fima-models`` command line: one module per command, dispatched from one table.

Convention (``python -m hub`` and ``python -m train`` follow it too):

- :data:`COMMANDS` maps each command name to the module that implements it; the module is named
  after the command (``-`` becomes ``_``; ``list`` lives in ``list_models`` because a submodule
  named ``list`` would shadow the builtin in this package's namespace);
- a command module exposes ``add_parser(subparsers) -> argparse.ArgumentParser``, which adds
  exactly its own sub-command, and ``run(args) -> int``, which executes it and returns the exit status;
- :func:`run_commands` builds the parser from such a table, configures logging, calls the
  command's ``run`` and turns the expected failures into one ``PROG COMMAND: error: ...`` line
  on stderr with exit status 1 (130 for Ctrl-C).
"""
import argparse
import importlib
import logging
import os
import sys
from typing import Callable, Dict, List, Mapping, Optional

from fima_models._utils import describe_os_error

__all__ = ['COMMANDS', 'main', 'add_commands', 'run_commands']

#: Command -> module implementing it (``add_parser(subparsers)`` and ``run(args)``).
COMMANDS: Dict[str, str] = {
    'list': 'fima_models.cli.list_models',
    'info': 'fima_models.cli.info',
    'download': 'fima_models.cli.download',
    'convert': 'fima_models.cli.convert',
    'extract': 'fima_models.cli.extract',
    'check-videos': 'fima_models.cli.check_videos',
}

Runner = Callable[[argparse.Namespace], int]


def add_commands(subparsers: argparse._SubParsersAction, commands: Mapping[str, str]) -> Dict[str, Runner]:
    """Import every module of a command table, let it add its parser, and return command -> ``run``."""
    runners: Dict[str, Runner] = {}
    for command, module_name in commands.items():
        module = importlib.import_module(module_name)
        module.add_parser(subparsers)
        runners[command] = module.run
    return runners


def run_commands(
        parser: argparse.ArgumentParser,
        commands: Mapping[str, str],
        argv: Optional[List[str]] = None,
) -> int:
    """Add the commands of a table to ``parser``, parse ``argv`` and run the chosen one.

    Args:
        parser: Top-level parser (program name, description, global options); an optional
            ``--verbose`` flag switches logging to debug.
        commands: Command -> module, see the module docstring.
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The command's status; 2 without a command, 1 after an error message, 130 on Ctrl-C.
    """
    runners = add_commands(parser.add_subparsers(dest='command', metavar='COMMAND'), commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, 'verbose', False) else logging.INFO,
        format='%(levelname)s %(name)s: %(message)s',
    )
    run = runners.get(args.command) if args.command else None
    if run is None:
        parser.print_help()
        return 2
    where = f'{parser.prog} {args.command}'
    try:
        return int(run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f'{where}: error: {err}', file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`fima-models list | head`); silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        print(f'{where}: error: {describe_os_error(err)}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{where}: interrupted', file=sys.stderr)
        return 130


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``fima-models`` command line; returns the process exit status."""
    from fima_models import __version__

    parser = argparse.ArgumentParser(
        prog='fima-models',
        description='Video backbones pretrained with FIMA: list, inspect, download, convert, extract features, '
                    'check videos.',
    )
    parser.add_argument('--version', action='version', version=f'fima-models {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='log debug messages')
    return run_commands(parser, COMMANDS, argv)


if __name__ == '__main__':
    sys.exit(main())
