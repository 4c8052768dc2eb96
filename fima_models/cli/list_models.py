"""``fima-models list``: the registered architectures, their pretrained tags, and the README model table."""
import argparse

from timm.models import get_pretrained_cfg, model_entrypoint

from fima_models._factory import MODEL_ALIASES, list_models, list_pretrained
from fima_models.cli.info import summarize_model

__all__ = ['add_parser', 'run', 'markdown_model_table', 'source_file']


def source_file(name: str) -> str:
    """Repository path of the file defining architecture ``name``, e.g. ``fima_models/models/resnet3d.py``."""
    return model_entrypoint(name).__module__.replace('.', '/') + '.py'


def markdown_model_table(link_prefix: str = '') -> str:
    """The model table of the README and docs, generated from the registry.

    Args:
        link_prefix: Put before the repository-relative links of the ``file`` column (each
            architecture's source file, so every model is one hop from the table): ``''`` for the
            README at the repository root, ``'../'`` for docs/models.md.
    """
    aliases = {target.split('.')[0]: alias for alias, target in MODEL_ALIASES.items()}
    lines = [
        '| model | alias | params (M) | GFLOPs | input (C, T, H, W) | pretrained tags (✅ published, ⏳ not yet) '
        '| file |',
        '|---|---|---|---|---|---|---|',
    ]
    for name in list_models():
        info = summarize_model(name)
        tags = ', '.join(f"`{t.split('.', 1)[1]}` {'✅' if published else '⏳'}" for t, published in info.tags)
        alias = f'`{aliases[name]}`' if name in aliases else ''
        path = source_file(name)
        lines.append(
            f'| `{name}` | {alias} | {info.params / 1e6:.2f} | {info.gflops:.1f} | {info.input_size} | {tags} '
            f'| [{path.rsplit("/", 1)[-1]}]({link_prefix}{path}) |')
    return '\n'.join(lines) + '\n'


def run(args: argparse.Namespace) -> int:
    """Print architectures, pretrained tags (with their publication state) or the markdown table."""
    if args.markdown:
        print(markdown_model_table(args.link_prefix), end='')
        return 0
    names = list_pretrained(args.pattern) if args.pretrained else list_models(args.pattern, include_test=args.test)
    for name in names:
        if args.pretrained:
            published = getattr(get_pretrained_cfg(name), 'published', False)
            print(f"{name}\t{'published' if published else 'not published'}")
        else:
            print(name)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``list`` to the ``fima-models`` command line."""
    p = subparsers.add_parser('list', help='list architectures or pretrained tags')
    p.add_argument('pattern', nargs='?', default='', help="wildcard filter, e.g. 'r*' or '*fima*'")
    p.add_argument('--pretrained', action='store_true', help='list pretrained arch.tag names instead')
    p.add_argument('--test', action='store_true', help='include the tiny test_* variants')
    p.add_argument('--markdown', action='store_true', help='print the model table of the README')
    p.add_argument('--link-prefix', default='', metavar='PREFIX',
                   help="with --markdown: prefix of the source-file links, e.g. '../' for a table in docs/")
    return p
