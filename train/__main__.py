"""``python -m train COMMAND ...``: dispatch to the module that implements COMMAND."""
import importlib
import sys
from typing import Dict, List, Optional

#: Command -> module whose ``main(argv)`` runs it. Downstream recipes share one parser and
#: receive the command name as ``argv[0]``.
COMMANDS: Dict[str, str] = {
    'pretrain': 'train.pretrain',
    'finetune': 'train.downstream',
    'linear': 'train.downstream',
    'retrieval': 'train.downstream',
    'test': 'train.downstream',
    'summarize': 'train.summarize',
    'demo': 'train.demo',
}
_KEEPS_COMMAND = {'finetune', 'linear', 'retrieval', 'test'}

USAGE = 'usage: python -m train {' + ','.join(COMMANDS) + '} [-h] ...'


def main(argv: Optional[List[str]] = None) -> int:
    """Run one training command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        print('Run `python -m train COMMAND --help` for the options of a command.')
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(f"{USAGE}\nerror: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return int(module.main(argv if command in _KEEPS_COMMAND else argv[1:]) or 0)


if __name__ == '__main__':
    sys.exit(main())
