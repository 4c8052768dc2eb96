"""Model creation and discovery: the library's front door, on top of the registry.

:func:`create_model` accepts everything timm's does on our registered video models, plus the
short aliases of the zoo (``r2plus1d_fima`` ..., :mod:`fima_models.models._registry`) and the
``hf-hub:`` / ``local-dir:`` sources (:func:`fima_models.models.resolve_model_source`).
"""
import difflib
import fnmatch
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
from timm.models import get_pretrained_cfg, is_model, list_models as _timm_list_models, model_entrypoint
from torch import nn

from fima_models.models import resolve_model_source  # importing the package registers the architectures
from fima_models.models._registry import MODEL_ALIASES, resolve_alias

__all__ = ['create_model', 'list_models', 'list_pretrained', 'resolve_alias', 'MODEL_ALIASES', 'UnknownModelError']

_SOURCE_PREFIXES = ('hf-hub:', 'local-dir:')


class UnknownModelError(ValueError, RuntimeError):
    """Raised for a model name that is neither registered nor an alias.

    A RuntimeError too, as timm raises for unknown models, so existing handlers keep working.
    """


def _is_video_model(arch: str) -> bool:
    return is_model(arch) and model_entrypoint(arch).__module__.startswith('fima_models.models.')


def _split_tag(name: str) -> Tuple[str, str]:
    arch, _, tag = name.partition('.')
    return arch, tag


def _unknown(name: str, candidates: List[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    return UnknownModelError(
        f"Unknown model '{name}'.{hint} Run `fima-models list` (or fima_models.list_models()) "
        f'for the registered names and `fima-models list --pretrained` for the weights.')


def _check_registered(name: str) -> None:
    arch, tag = _split_tag(name)
    if not _is_video_model(arch):
        raise _unknown(name, list_models() + list(MODEL_ALIASES) + list_pretrained())
    if tag and name not in list_pretrained(f'{arch}.*'):
        raise _unknown(name, list_pretrained(f'{arch}.*'))


def create_model(
        model_name: str,
        pretrained: bool = False,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
) -> nn.Module:
    """Create a video backbone by name.

    Args:
        model_name: A registered architecture (``r2plus1d_18``), an ``arch.tag`` pretrained name
            (``r2plus1d_18.tv_k400``), an alias (``r2plus1d_fima``), ``hf-hub:ORG/NAME`` or
            ``local-dir:PATH`` (a folder written by ``fima-models convert`` or ``python -m hub export``).
        pretrained: Load the weights of the tag (or of the default tag of the architecture).
            Names with a source prefix always load their weights.
        pretrained_cfg_overlay: Fields replacing those of the pretrained config, for example
            ``dict(file='weights.safetensors')`` to load a local file.
        **kwargs: Passed to the model: ``num_classes``, ``in_chans``, ``drop_rate``,
            ``features_only``, ``out_indices`` ...

    Returns:
        The model, in train mode, as ``timm.create_model`` returns it.

    Raises:
        UnknownModelError: ``model_name`` is not registered; the message lists close matches.
    """
    if not isinstance(model_name, str) or not model_name:
        raise UnknownModelError(
            f"model_name must be a model name such as 'r2plus1d_18', got {model_name!r}; run `fima-models list` "
            'for the registered names')
    if model_name.startswith(_SOURCE_PREFIXES):
        arch, source_cfg, model_kwargs = resolve_model_source(model_name)
        overlay = {**source_cfg, **(pretrained_cfg_overlay or {})}
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **{**model_kwargs, **kwargs})

    name = resolve_alias(model_name)
    _check_registered(name)
    return timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)


def list_models(pattern: Union[str, List[str]] = '', include_test: bool = False) -> List[str]:
    """Names of the registered video architectures, optionally filtered by a wildcard pattern.

    Args:
        pattern: Shell-style wildcard(s), e.g. ``'r*'``; empty lists all.
        include_test: Include the tiny ``test_*`` variants meant for unit tests.
    """
    names = sorted(n for n in _timm_list_models() if _is_video_model(n))
    if not include_test:
        names = [n for n in names if not n.startswith('test_')]
    return _filter(names, pattern)


def list_pretrained(pattern: Union[str, List[str]] = '', published_only: bool = False) -> List[str]:
    """Pretrained ``arch.tag`` names of the video models, optionally filtered.

    Args:
        pattern: Shell-style wildcard(s) over ``arch.tag``, e.g. ``'*fima*'``.
        published_only: Keep only tags whose weight files have been published.
    """
    names = [n for n in timm.list_pretrained() if _is_video_model(_split_tag(n)[0])]
    if published_only:
        names = [n for n in names if getattr(get_pretrained_cfg(n), 'published', False)]
    return _filter(sorted(names), pattern)


def _filter(names: List[str], pattern: Union[str, List[str]]) -> List[str]:
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    patterns = [p for p in patterns if p]
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
