"""``fima-models download NAME...``: pre-fetch pretrained weights into the local caches.

Run on a machine with network access; an offline machine then uses a copy of those caches
(``HF_HUB_CACHE`` and the torch hub directory), see docs/weights.md.
"""
import argparse
from typing import List

from fima_models.models import PretrainedWeightsUnavailable, download_pretrained
from fima_models.models._hub import hub_cache_dir, torch_checkpoint_dir

__all__ = ['add_parser', 'run']


def run(args: argparse.Namespace) -> int:
    """Fetch every name's weights into the local caches; exit 1 if any failed."""
    failed: List[str] = []
    for name in args.names:
        try:
            paths = download_pretrained(name)
        except (PretrainedWeightsUnavailable, ValueError) as err:
            print(f'{name}: FAILED\n{err}\n')
            failed.append(name)
            continue
        for path in paths:
            print(f'{name}: {path}')
    print(f'Caches: HF_HUB_CACHE={hub_cache_dir()}  torch hub={torch_checkpoint_dir()}')
    if failed:
        print(f'{len(failed)} of {len(args.names)} failed: {", ".join(failed)}')
        return 1
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``download`` to the ``fima-models`` command line."""
    p = subparsers.add_parser(
        'download', help='pre-fetch pretrained weights into the local caches (for offline machines)',
        description='Download weights of pretrained names (arch.tag, alias, architecture default, or '
                    'hf-hub:ORG/NAME) into HF_HUB_CACHE / the torch hub cache. Copy those caches to an '
                    'offline machine, or share them via HF_HUB_CACHE / TORCH_HOME.')
    p.add_argument('names', nargs='+', metavar='NAME', help='e.g. r2plus1d_18.tv_k400 r2plus1d_fima hf-hub:ORG/NAME')
    return p
