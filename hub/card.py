"""Model-card sections for exported weights: the pretraining recipe and the evaluation table.

Evaluation results are read from a JSON file in any of these shapes::

    {"ucf101_finetune_top1": 84.2, "hmdb51_linear_top1": 42.8}              # flat
    {"ucf101": {"finetune_top1": 84.2, "linear_top1": 75.3}}                 # grouped
    [{"task": "finetune", "dataset": "ucf101", "metric": "top1", "value": 84.2}, ...]   # rows
"""
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

__all__ = ['load_results', 'metrics_from_results', 'recipe_section', 'evaluation_section']

#: Training-config keys (flattened with dots) shown first in the recipe table, when present.
_RECIPE_FIRST = ('method', 'model.arch', 'data.dataset', 'data.split', 'data.clip_len', 'data.size', 'train.epochs',
                 'train.batch_size', 'optim.name', 'optim.lr', 'optim.momentum', 'optim.weight_decay',
                 'schedule.name', 'fima.temperature', 'fima.queue_size')
#: Machine-specific settings left out of a published recipe (local paths, worker counts, devices).
_RECIPE_SKIP = ('data.root', 'data.num_workers', 'device', 'out', 'resume')


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f'Result {where} must be a finite number, got {value!r}.')
    return float(value)


def metrics_from_results(results: Union[Mapping[str, Any], List[Mapping[str, Any]]]) -> Dict[str, float]:
    """Flatten results (see module docs) into ``{name: value}`` with ``_``-joined names.

    Raises:
        ValueError: A value is not a number or a row lacks ``metric``/``value``.
    """
    metrics: Dict[str, float] = {}
    if isinstance(results, Mapping):
        for key, value in results.items():
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    metrics[f'{key}_{sub}'] = _number(v, f'{key}.{sub}')
            else:
                metrics[str(key)] = _number(value, str(key))
    elif isinstance(results, list):
        for i, row in enumerate(results):
            if not isinstance(row, Mapping) or 'metric' not in row or 'value' not in row:
                raise ValueError(f"Result row {i} needs 'metric' and 'value' (and optionally 'dataset', 'task').")
            name = '_'.join(str(row[k]) for k in ('dataset', 'task', 'metric') if row.get(k))
            metrics[name] = _number(row['value'], name)
    else:
        raise ValueError('Results must be a JSON object or a list of rows; see hub/card.py for the accepted shapes.')
    return metrics


def load_results(path: Union[str, Path]) -> Dict[str, float]:
    """Read a results JSON file into flat metrics.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: It is not JSON or has no usable numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Results file not found: {path}.')
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f'{path} is not valid JSON ({e}).') from e
    metrics = metrics_from_results(data)
    if not metrics:
        raise ValueError(f'{path} holds no results.')
    return metrics


def _flatten(config: Mapping[str, Any], prefix: str = '') -> List[Tuple[str, Any]]:
    items: List[Tuple[str, Any]] = []
    for key, value in config.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            items.extend(_flatten(value, f'{name}.'))
        else:
            items.append((name, value))
    return items


def _cell(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text.replace('|', '\\|').replace('\n', ' ')


def recipe_section(config: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """Markdown for the pretraining recipe: method, epochs and the checkpoint's training config.

    Args:
        config: The training configuration stored in the checkpoint (may be empty).
        meta: Container facts (``method``, ``epoch``, ``step``, ``arch`` ...).
    """
    facts = [f'{k}: `{meta[k]}`' for k in ('method', 'model_name', 'arch', 'epoch', 'step') if meta.get(k) is not None]
    lines = [('Checkpoint ' + ', '.join(facts) + '.') if facts else 'Checkpoint facts not recorded.', '']
    if not config:
        lines.append('The checkpoint carries no training configuration.')
        return '\n'.join(lines)
    items = {k: v for k, v in _flatten(config) if k not in _RECIPE_SKIP}
    order = [k for k in _RECIPE_FIRST if k in items] + sorted(k for k in items if k not in _RECIPE_FIRST)
    lines += ['| setting | value |', '|---|---|'] + [f'| {k} | {_cell(items[k])} |' for k in order]
    return '\n'.join(lines)


def evaluation_section(metrics: Mapping[str, float]) -> str:
    """Markdown table of evaluation results."""
    if not metrics:
        return 'Not evaluated yet.'
    lines = ['| result | value |', '|---|---|'] + [f'| {k} | {v:g} |' for k, v in metrics.items()]
    return '\n'.join(lines)
