"""``fima-models list`` and ``fima-models info``: what the zoo holds."""
import argparse
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

from fima_models._factory import MODEL_ALIASES, create_model, list_models, list_pretrained, resolve_alias

__all__ = ['register', 'ModelSummary', 'summarize_model', 'markdown_model_table']


@dataclass
class ModelSummary:
    """Size and cost of one architecture at its default input."""
    name: str
    params: int
    input_size: Tuple[int, ...]
    gflops: float
    num_features: int
    feature_info: List[Dict[str, Any]]
    tags: List[Tuple[str, bool]]  # (tag, published)


def summarize_model(name: str) -> ModelSummary:
    """Count parameters and forward FLOPs (2 per multiply-add) of ``name`` on its default input.

    The model is built on the meta device, so no memory is allocated and nothing is computed.
    """
    with torch.device('meta'):
        model = create_model(name, num_classes=0).eval()
        input_size = tuple(model.pretrained_cfg['input_size'])
        sample = torch.empty(1, *input_size)
    with FlopCounterMode(display=False) as counter:
        model(sample)
    return ModelSummary(
        name=name,
        params=sum(p.numel() for p in model.parameters()),
        input_size=input_size,
        gflops=counter.get_total_flops() / 1e9,
        num_features=model.num_features,
        feature_info=[dict(f) for f in model.feature_info],
        tags=[(t, bool(getattr(get_pretrained_cfg(t), 'published', False))) for t in list_pretrained(f'{name}.*')],
    )


def markdown_model_table() -> str:
    """The model table of the README and docs, generated from the registry."""
    aliases = {target.split('.')[0]: alias for alias, target in MODEL_ALIASES.items()}
    lines = [
        '| model | alias | params (M) | GFLOPs | input (C, T, H, W) | pretrained tags (✅ published, ⏳ not yet) |',
        '|---|---|---|---|---|---|',
    ]
    for name in list_models():
        info = summarize_model(name)
        tags = ', '.join(f"`{t.split('.', 1)[1]}` {'✅' if published else '⏳'}" for t, published in info.tags)
        alias = f'`{aliases[name]}`' if name in aliases else ''
        lines.append(
            f'| `{name}` | {alias} | {info.params / 1e6:.2f} | {info.gflops:.1f} | {info.input_size} | {tags} |')
    return '\n'.join(lines) + '\n'


def _cmd_list(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_model_table(), end='')
        return 0
    names = list_pretrained(args.pattern) if args.pretrained else list_models(args.pattern, include_test=args.test)
    for name in names:
        if args.pretrained:
            published = getattr(get_pretrained_cfg(name), 'published', False)
            print(f"{name}\t{'published' if published else 'not published'}")
        else:
            print(name)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = summarize_model(resolve_alias(args.name).split('.')[0])
    if args.json:
        print(json.dumps(info.__dict__, indent=2))
        return 0
    print(f'{info.name}')
    print(f'  params:       {info.params:,} ({info.params / 1e6:.2f} M)')
    print(f'  input:        {info.input_size} (C, T, H, W)')
    print(f'  GFLOPs:       {info.gflops:.2f} per clip at that input')
    print(f'  num_features: {info.num_features}')
    print('  feature_info:')
    for i, f in enumerate(info.feature_info):
        print(f"    [{i}] {f['module']}: {f['num_chs']} channels, reduction {f['reduction']}")
    print('  pretrained tags:')
    for tag, published in info.tags:
        print(f"    {tag}{'' if published else '  (not published yet)'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``list`` and ``info`` to the ``fima-models`` command line."""
    p = subparsers.add_parser('list', help='list architectures or pretrained tags')
    p.add_argument('pattern', nargs='?', default='', help="wildcard filter, e.g. 'r*' or '*fima*'")
    p.add_argument('--pretrained', action='store_true', help='list pretrained arch.tag names instead')
    p.add_argument('--test', action='store_true', help='include the tiny test_* variants')
    p.add_argument('--markdown', action='store_true', help='print the model table of the README')
    p.set_defaults(func=_cmd_list)

    p = subparsers.add_parser('info', help='params, GFLOPs, feature_info and tags of a model')
    p.add_argument('name', help='architecture, arch.tag or alias')
    p.add_argument('--json', action='store_true', help='machine-readable output')
    p.set_defaults(func=_cmd_info)
