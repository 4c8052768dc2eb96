"""``fima-models info NAME``: parameters, FLOPs, feature levels and pretrained tags of a model."""
import argparse
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

from fima_models._factory import create_model, list_pretrained, resolve_alias

__all__ = ['add_parser', 'run', 'ModelSummary', 'summarize_model']


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


def run(args: argparse.Namespace) -> int:
    """Print the summary of one architecture (an ``arch.tag`` or alias names its architecture)."""
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


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``info`` to the ``fima-models`` command line."""
    p = subparsers.add_parser('info', help='params, GFLOPs, feature_info and tags of a model')
    p.add_argument('name', help='architecture, arch.tag or alias')
    p.add_argument('--json', action='store_true', help='machine-readable output')
    return p
