"""``python -m hub {export,publish}``: release tooling for the zoo's weights.

Dispatched like ``fima-models`` (see :mod:`fima_models.cli`): :data:`COMMANDS` maps each command
to the module named after it, which exposes ``add_parser(subparsers)`` and ``run(args)``.
"""
import argparse
import sys
from typing import Dict, List, Optional

from fima_models.cli import run_commands

__all__ = ['COMMANDS', 'main']

#: Command -> module implementing it.
COMMANDS: Dict[str, str] = {
    'export': 'hub.export',
    'publish': 'hub.publish',
}


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``python -m hub``; returns the exit status."""
    parser = argparse.ArgumentParser(prog='python -m hub', description='Export and publish fima-models weights.')
    return run_commands(parser, COMMANDS, argv)


if __name__ == '__main__':
    sys.exit(main())
