"""Model construction for the video zoo: config resolution, pretrained loading, feature wrapping.

:func:`build_video_model` follows timm's ``build_model_with_cfg`` step for step, with the changes a
video model needs: pretrained configs are :class:`VideoPretrainedCfg` with a 4-D
``input_size=(C, T, H, W)``, weights load through :func:`load_pretrained` (fetched by :mod:`._hub`,
fitted by :mod:`._manipulate`), and ``features_only=True`` wraps the model in timm's
``FeatureGetterNet`` by default (5-D maps from the model's ``forward_intermediates``).
:func:`model_creator` is the ``_create`` step every model file shares.
"""
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import torch
import torch.nn as nn
from timm.models import PretrainedCfg, resolve_pretrained_cfg
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet

from fima_models.checkpoint import (
    CheckpointError, ExtractedCheckpoint, extract_backbone, load_backbone_state_dict, require_finite, summarize_keys,
)

from ._hub import fetch_pretrained, tag_name
from ._manipulate import adapt_state_dict, as_name_list, keys_under
from ._pretrained_cfg import VideoPretrainedCfg, pretrained_cfg_dict

__all__ = [
    'build_video_model', 'model_creator', 'resolve_feature_cls', 'check_model_args',
    'load_pretrained', 'load_state_dict_strict', 'LoadedWeights',
]

_logger = logging.getLogger(__name__)

ModelT = TypeVar('ModelT', bound=nn.Module)

_FEATURE_CLASSES: Dict[str, type] = {
    'getter': FeatureGetterNet,
    'list': FeatureListNet,
    'dict': FeatureDictNet,
    'hook': FeatureHookNet,
}


@dataclass
class LoadedWeights:
    """What :func:`load_pretrained` loaded and what it left out.

    Attributes:
        source: Where the weights came from (a path, ``hf-hub:ORG/NAME`` or ``'state_dict'``).
        format: Checkpoint container format detected by :mod:`fima_models.checkpoint`.
        dropped: Checkpoint keys not loaded (training-only parts, classifier).
        adapted: Keys changed to fit the model (first convolution for ``in_chans``).
    """
    source: str
    format: str
    dropped: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)


def load_state_dict_strict(
        model: nn.Module,
        sd: Mapping[str, torch.Tensor],
        allowed_missing: Sequence[str] = (),
        name: str = 'the checkpoint',
) -> None:
    """Load ``sd`` into ``model``, failing with the offending keys on any mismatch.

    Args:
        model: Target model.
        sd: State dict with the model's key names.
        allowed_missing: Model keys that may be absent (e.g. a freshly initialised classifier);
            ``num_batches_tracked`` buffers may always be absent.
        name: What ``sd`` is, for the error message.

    Raises:
        CheckpointError: Missing, unexpected or mis-shaped keys, listed by name.
    """
    model_sd = model.state_dict()
    allowed = set(allowed_missing)
    missing = [k for k in model_sd if k not in sd and k not in allowed and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in sd if k not in model_sd]
    mismatched = [f'{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(model_sd[k].shape)})'
                  for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f'missing {len(missing)} keys: {summarize_keys(missing)}')
        if unexpected:
            problems.append(f'unexpected {len(unexpected)} keys: {summarize_keys(unexpected)}')
        if mismatched:
            problems.append(f'{len(mismatched)} shape mismatches: {summarize_keys(mismatched, limit=4)}')
        overlap = len(set(sd) & set(model_sd)) / max(len(model_sd), 1)
        hint = (' The checkpoint looks like a different architecture.' if overlap < 0.5
                else ' Check the model variant and its arguments.')
        raise CheckpointError(f"Weights from {name} do not fit {type(model).__name__}: {'; '.join(problems)}.{hint}")
    model.load_state_dict(sd, strict=False)


def load_pretrained(
        model: nn.Module,
        pretrained_cfg: Any = None,
        filter_fn: Optional[Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]] = None,
        strict: bool = True,
) -> LoadedWeights:
    """Load the pretrained weights described by ``pretrained_cfg`` into ``model``, in place.

    Steps: find the weights (:func:`._hub.fetch_pretrained`: file, hub, URL, caches first), read
    them safely and unwrap the backbone (:func:`fima_models.checkpoint.load_backbone_state_dict`),
    apply ``filter_fn(state_dict, model)``, adapt input channels and classifier
    (:func:`._manipulate.adapt_state_dict`), then load everything else strictly.

    Args:
        model: Model built without weights.
        pretrained_cfg: The model's pretrained config (dataclass or dict); defaults to ``model.pretrained_cfg``.
        filter_fn: Model-specific key remapping, timm style.
        strict: When False, missing and unexpected keys are logged instead of raising.

    Returns:
        What was loaded and dropped.

    Raises:
        PretrainedWeightsUnavailable: No weights can be found or downloaded.
        CheckpointError: The weights are unreadable, unsafe, hold NaN/Inf values, or do not fit the model.
    """
    cfg = pretrained_cfg_dict(pretrained_cfg if pretrained_cfg is not None else model)
    name = tag_name(cfg)
    if cfg.get('state_dict') is not None:
        extracted: ExtractedCheckpoint = extract_backbone(cfg['state_dict'])
        source = 'state_dict'
    else:
        path = fetch_pretrained(cfg)
        extracted = load_backbone_state_dict(path)
        source = str(path)
    sd = extracted.state_dict
    require_finite(sd, f"'{name}' ({source})")
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    sd, dropped_head, adapted = adapt_state_dict(model, sd, cfg)
    heads = as_name_list(cfg.get('classifier'))
    # a classifier the checkpoint does not provide keeps its initialisation
    allowed_missing = keys_under(model.state_dict(), heads) if (dropped_head or not keys_under(sd, heads)) else []
    if strict:
        load_state_dict_strict(model, sd, allowed_missing, f"'{name}' ({source})")
    else:
        result = model.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            _logger.warning('Non-strict load of %s: missing %s; unexpected %s', name,
                            summarize_keys(result.missing_keys), summarize_keys(result.unexpected_keys))
    dropped = extracted.dropped + dropped_head
    if extracted.dropped:
        _logger.info('Ignored %d training-only keys of the %s checkpoint: %s', len(extracted.dropped),
                     extracted.format, summarize_keys(extracted.dropped))
    _logger.info('Loaded pretrained weights for %s from %s', name, source)
    return LoadedWeights(source=source, format=extracted.format, dropped=dropped, adapted=adapted)


def resolve_feature_cls(feature_cls: Union[str, type, None]) -> type:
    """Map timm's feature-wrapper names (``'getter'``, ``'list'``, ``'dict'``, ``'hook'``) or a class to a class."""
    if feature_cls is None:
        return FeatureGetterNet
    if isinstance(feature_cls, str):
        key = feature_cls.lower()
        if key not in _FEATURE_CLASSES:
            raise ValueError(f'Unknown feature_cls {feature_cls!r}; use one of {sorted(_FEATURE_CLASSES)} '
                             f'or pass a feature wrapper class.')
        return _FEATURE_CLASSES[key]
    return feature_cls


def _as_cfg(pretrained_cfg: Union[str, Dict[str, Any], PretrainedCfg, None]) -> Union[str, PretrainedCfg, None]:
    # timm turns a dict into a plain PretrainedCfg, which would reject the video fields
    if isinstance(pretrained_cfg, dict):
        return VideoPretrainedCfg(**pretrained_cfg)
    return pretrained_cfg


def _wrap_features(model: nn.Module, pretrained_cfg: Dict[str, Any], feature_cfg: Dict[str, Any]) -> nn.Module:
    feature_cls = resolve_feature_cls(feature_cfg.pop('feature_cls', None))
    feature_cfg.setdefault('out_indices', tuple(range(len(model.feature_info))))
    if issubclass(feature_cls, (FeatureListNet, FeatureDictNet)):
        # levels that sit inside an nn.Sequential (S3D's ``features.N``) are reached by flattening it
        nested = any('.' in info['module'] for info in model.feature_info)
        feature_cfg.setdefault('flatten_sequential', nested)
    in_chans = model.in_chans
    model = feature_cls(model, **feature_cfg)
    model.in_chans = in_chans
    model.pretrained_cfg = pretrained_cfg_for_features(pretrained_cfg)
    model.default_cfg = model.pretrained_cfg
    return model


#: Constructor arguments checked before a model is built: name -> (integer?, lowest, highest (exclusive) or None).
_ARG_RULES: Dict[str, Tuple[bool, float, Optional[float]]] = {
    'num_classes': (True, 0, None),
    'in_chans': (True, 1, None),
    'drop_rate': (False, 0.0, 1.0),
    'drop_path_rate': (False, 0.0, 1.0),
}


def check_model_args(variant: str, kwargs: Dict[str, Any]) -> None:
    """Refuse constructor arguments of the wrong type or range with one message naming them.

    ``num_classes`` must be an integer >= 0 (0: no classifier), ``in_chans`` an integer >= 1,
    ``drop_rate`` / ``drop_path_rate`` a number in ``[0, 1)``.

    Raises:
        ValueError: naming the argument, its value and what is accepted.
    """
    for name, (integer, low, high) in _ARG_RULES.items():
        if name not in kwargs or kwargs[name] is None:
            continue
        value = kwargs[name]
        kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not kind_ok:
            kind = 'an integer' if integer else 'a number'
            raise ValueError(f'{variant}: {name} must be {kind}, got {value!r} ({type(value).__name__})')
        if value < low or (high is not None and not value < high) or value != value:
            accepted = f'>= {low}' if high is None else f'in [{low}, {high})'
            raise ValueError(f'{variant}: {name} must be {accepted}, got {value!r}')


def _check_input_dtype(conv: nn.Module, args: Tuple[Any, ...]) -> None:
    """Forward pre-hook of a model's first convolution: a clear error when clips and weights differ in dtype.

    (Shape and type are checked by each model's ``check_video_input``; autocast casts by itself.)
    """
    x, weight = args[0] if args else None, getattr(conv, 'weight', None)
    if not isinstance(x, torch.Tensor) or weight is None or x.dtype == weight.dtype:
        return
    try:
        autocast = torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type without autocast (meta): no cast happens, the conv will decide
        return
    if not autocast:
        raise TypeError(f'the model weights are {weight.dtype} but the clips are {x.dtype}; convert the clips with '
                        f'clips.to({weight.dtype}) (or the model with model.to({x.dtype}))')


def _install_input_check(model: nn.Module, first_conv: Any) -> None:
    names = [first_conv] if isinstance(first_conv, str) else list(first_conv or [])
    for name in names:
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            continue
        conv.register_forward_pre_hook(_check_input_dtype)
        return


def build_video_model(
        model_cls: Union[Type[ModelT], Callable[..., ModelT]],
        variant: str,
        pretrained: bool = False,
        pretrained_cfg: Union[str, Dict[str, Any], PretrainedCfg, None] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        pretrained_filter_fn: Optional[Callable] = None,
        feature_cfg: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a registered video model the way timm's ``build_model_with_cfg`` builds an image model.

    1. Resolve the pretrained config of ``variant`` (a tag string, a dict, a config, or the default
       tag from the registry) and apply ``pretrained_cfg_overlay``.
    2. Default ``num_classes`` and ``in_chans`` from the config unless given.
    3. Check the common arguments (:func:`check_model_args`), construct ``model_cls(**kwargs)``,
       give its first convolution a dtype check (a clear error for float64 clips into a float32
       model) and attach ``pretrained_cfg`` (a dict).
    4. If ``pretrained``: :func:`load_pretrained` ``(model, pretrained_cfg, filter_fn)``.
    5. If ``features_only``: wrap in a timm feature class (``feature_cls``, default ``'getter'``)
       selecting ``out_indices`` (default: every level).

    Args:
        model_cls: Model class or constructor.
        variant: Registered architecture name.
        pretrained: Load the config's weights.
        pretrained_cfg: Tag, dict or config overriding the registry default.
        pretrained_cfg_overlay: Fields replacing those of the resolved config.
        pretrained_filter_fn: The model file's ``checkpoint_filter_fn`` (architecture-specific key remapping).
        feature_cfg: Extra arguments for the feature wrapper.
        **kwargs: Model arguments, plus ``features_only``, ``out_indices``, ``feature_cls``; timm's
            ``cache_dir`` is accepted (weights use the Hugging Face / torch hub caches).

    Returns:
        The model, or its feature wrapper.
    """
    cache_dir = kwargs.pop('cache_dir', None)
    if cache_dir is not None:
        _logger.warning('cache_dir=%s is ignored: weights are cached in the Hugging Face / torch hub caches '
                        '(set HF_HOME or TORCH_HOME to move them).', cache_dir)
    features_only = kwargs.pop('features_only', False)
    feature_cfg = dict(feature_cfg or {})
    for key in ('out_indices', 'feature_cls'):
        if key in kwargs:
            feature_cfg[key] = kwargs.pop(key)
    if feature_cfg and not features_only:
        raise ValueError(f'{variant}: {sorted(feature_cfg)} only apply with features_only=True.')

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=_as_cfg(pretrained_cfg),
                                 pretrained_cfg_overlay=pretrained_cfg_overlay)
    if not isinstance(cfg, VideoPretrainedCfg):
        cfg = VideoPretrainedCfg(**dataclasses.asdict(cfg))
    cfg_dict = cfg.to_dict()
    if cfg_dict.get('num_classes') is not None and cfg_dict['num_classes'] >= 0:
        kwargs.setdefault('num_classes', cfg_dict['num_classes'])
    input_size = cfg_dict.get('input_size')
    if input_size is not None:
        kwargs.setdefault('in_chans', input_size[0])

    check_model_args(variant, kwargs)
    model = model_cls(**kwargs)
    _install_input_check(model, cfg_dict.get('first_conv'))
    model.pretrained_cfg = cfg_dict
    model.default_cfg = model.pretrained_cfg

    if pretrained:
        load_pretrained(model, pretrained_cfg=model.pretrained_cfg, filter_fn=pretrained_filter_fn)

    if features_only:
        model = _wrap_features(model, cfg_dict, feature_cfg)
    return model


def model_creator(
        model_cls: Type[ModelT],
        filter_fn: Optional[Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]] = None,
) -> Callable[..., ModelT]:
    """The ``_create(variant, pretrained=False, **kwargs)`` function of a model file.

    The returned function names the model after its registered variant (``model_name``, used in
    error messages) and builds it with :func:`build_video_model` and the file's ``checkpoint_filter_fn``.

    Args:
        model_cls: The family's model class (it takes ``model_name``).
        filter_fn: The model file's ``checkpoint_filter_fn``.
    """
    def create(variant: str, pretrained: bool = False, **kwargs: Any) -> ModelT:
        kwargs.setdefault('model_name', variant)
        return build_video_model(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)

    create.__name__ = create.__qualname__ = f'create_{model_cls.__name__.lower()}'
    return create
