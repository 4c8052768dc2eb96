"""Building blocks shared by every video backbone in :mod:`fima_models.models`.

* :func:`check_video_input` - the one place that validates a clip tensor and explains a bad one.
* :class:`VideoBackbone` - the timm model interface (head, feature info, intermediates, pruning,
  gradient checkpointing) implemented once on top of a model's list of *stages*.
* :class:`ConvBnAct3d` - conv (no bias) + BatchNorm3d + ReLU as an ``nn.Sequential`` (keys ``0``/``1``).
* :data:`INCEPTION_WIDTHS` and :func:`scale_widths` - the Inception-v1 widths used by S3D and I3D.

A *stage* is a tuple of dotted sub-module names that run one after another. Stage ``i`` ends at
feature level ``i`` (``feature_info[i]``): stage 0 is the stem, each later stage starts with the
down-sampling step of its level. Intermediates, pruning, parameter groups and checkpointing all
derive from that one description, so a model file only declares its stages.
"""
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.models._features import feature_take_indices

__all__ = [
    'check_video_input', 'VideoBackbone', 'ConvBnAct3d', 'init_weights',
    'INCEPTION_WIDTHS', 'INCEPTION_STAGES', 'TINY_INCEPTION_ARGS', 'mixed_out_chs', 'scale_widths',
]

#: Inception-v1 mixed block widths ``(b0, b1a, b1b, b2a, b2b, b3)`` of blocks 3b, 3c, 4b..4f, 5b, 5c.
#: The same numbers appear in S3D (Xie et al. 2018) and Inception-I3D (Carreira & Zisserman 2017).
INCEPTION_WIDTHS: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (64, 96, 128, 16, 32, 32),  # 3b
    (128, 128, 192, 32, 96, 64),  # 3c
    (192, 96, 208, 16, 48, 64),  # 4b
    (160, 112, 224, 24, 64, 64),  # 4c
    (128, 128, 256, 24, 64, 64),  # 4d
    (112, 144, 288, 32, 64, 64),  # 4e
    (256, 160, 320, 32, 128, 128),  # 4f
    (256, 160, 320, 32, 128, 128),  # 5b
    (384, 192, 384, 48, 128, 128),  # 5c
)
#: Names of the mixed blocks, grouped by the pooling step that precedes them.
INCEPTION_STAGES: Tuple[Tuple[str, ...], ...] = (('3b', '3c'), ('4b', '4c', '4d', '4e', '4f'), ('5b', '5c'))


def mixed_out_chs(widths: Sequence[int]) -> int:
    """Output channels of an Inception mixed block with widths ``(b0, b1a, b1b, b2a, b2b, b3)``."""
    b0, _, b1b, _, b2b, b3 = widths
    return b0 + b1b + b2b + b3


def scale_widths(widths: Sequence[int], divisor: int) -> Tuple[int, ...]:
    """Divide channel widths by ``divisor`` (at least 1 channel each), for tiny test variants."""
    return tuple(max(1, w // divisor) for w in widths)


#: Constructor widths of the tiny Inception test variants (``test_s3d``, ``test_i3d``): widths / 16.
TINY_INCEPTION_ARGS: Dict[str, Any] = dict(
    stem_widths=(8, 8, 12), mixed_widths=tuple(scale_widths(w, 16) for w in INCEPTION_WIDTHS))


def check_video_input(
        x: torch.Tensor,
        model_name: str,
        in_chans: int,
        min_size: Tuple[int, int, int] = (1, 1, 1),
) -> None:
    """Validate a clip batch of shape ``(N, C, T, H, W)`` before it reaches the first layer.

    Args:
        x: Input tensor.
        model_name: Name used in the error message.
        in_chans: Expected channel count ``C``.
        min_size: Smallest ``(T, H, W)`` the architecture can take.

    Raises:
        ValueError: Wrong rank, wrong channel count or a clip smaller than ``min_size``.
        TypeError: Not a tensor (e.g. a numpy array), or integer input (decoded uint8 frames that
            were not converted and normalised).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{model_name} takes a torch.Tensor of clips (N, {in_chans}, T, H, W), got '
                        f'{type(x).__module__}.{type(x).__name__}; convert it with torch.as_tensor(x, dtype=torch.float32)')
    t, h, w = min_size
    if x.ndim != 5 or x.shape[1] != in_chans or x.shape[2] < t or x.shape[3] < h or x.shape[4] < w:
        hint = ''
        if x.ndim == 4:
            hint = ' A 4-D tensor is a single clip or an image batch: add the batch dim with x.unsqueeze(0).'
        elif x.ndim == 5 and x.shape[-1] == in_chans and x.shape[1] != in_chans:
            hint = ' The input looks channels-last (N, T, H, W, C): use x.permute(0, 4, 1, 2, 3).'
        elif x.ndim == 5 and x.shape[2] == in_chans and x.shape[1] != in_chans:
            hint = ' The input looks like (N, T, C, H, W): use x.transpose(1, 2).'
        raise ValueError(
            f'{model_name} expects input of shape (N, {in_chans}, T, H, W) with T>={t}, H>={h}, W>={w}, '
            f'got {tuple(x.shape)}.{hint}')
    if not x.is_floating_point():
        raise TypeError(
            f'{model_name} expects a floating point clip (normalised RGB), got dtype {x.dtype}; '
            f'convert decoded frames with x.float() / 255 and normalise them first.')


def init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convs, unit BatchNorm, small normal init for linear heads."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class ConvBnAct3d(nn.Sequential):
    """Conv3d without bias, BatchNorm3d and ReLU; sub-modules are ``0`` (conv), ``1`` (norm), ``2`` (act).

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Kernel size, an int or ``(t, h, w)``.
        stride: Stride, an int or ``(t, h, w)``.
        padding: Zero padding, an int or ``(t, h, w)``.
        norm_layer: Normalisation layer factory taking the channel count.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: Union[int, Tuple[int, int, int]] = 1,
            stride: Union[int, Tuple[int, int, int]] = 1,
            padding: Union[int, Tuple[int, int, int]] = 0,
            norm_layer: Callable[[int], nn.Module] = nn.BatchNorm3d,
    ):
        super().__init__(
            nn.Conv3d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=False),
            norm_layer(out_chs),
            nn.ReLU(inplace=True),
        )


def _run_modules(x: torch.Tensor, modules: Sequence[nn.Module]) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


class VideoBackbone(nn.Module):
    """Base class implementing timm's model interface for ``(N, C, T, H, W)`` backbones.

    Subclasses build their layers, then set ``stage_names`` (one tuple of module names per
    ``feature_info`` entry), ``feature_info`` and ``num_features``, and provide the classifier
    through :meth:`get_classifier` / :meth:`reset_classifier` (default: a ``fc`` linear layer).

    Args:
        model_name: Name used in error messages.
        num_classes: Classifier outputs; 0 for a backbone that returns pooled features.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
    """
    #: Smallest ``(T, H, W)`` the architecture can take; subclasses override.
    min_input_size: Tuple[int, int, int] = (1, 1, 1)
    #: Stage modules are ``nn.Sequential`` lists of blocks (fine parameter groups per block).
    stages_are_block_lists: bool = False

    def __init__(self, model_name: str, num_classes: int, in_chans: int, drop_rate: float):
        super().__init__()
        if in_chans < 1:
            raise ValueError(f'{model_name}: in_chans must be >= 1, got {in_chans}.')
        if num_classes < 0:
            raise ValueError(f'{model_name}: num_classes must be >= 0 (0 = no classifier), got {num_classes}.')
        self.model_name = model_name
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stage_names: Tuple[Tuple[str, ...], ...] = ()
        self.feature_info: List[Dict[str, Any]] = []
        self.num_features = 0
        self.head_hidden_size = 0

    # --- classifier -------------------------------------------------------------------------
    def _make_fc(self, num_classes: int) -> nn.Module:
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(fc, nn.Linear):
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)
        return fc

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the classifier module (``nn.Identity`` when ``num_classes == 0``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a freshly initialised one with ``num_classes`` outputs.

        Args:
            num_classes: New number of classes, 0 removes the classifier.
            global_pool: Only ``'avg'`` (or ``None``/``''`` for the default) is supported.
        """
        if global_pool not in (None, '', 'avg'):
            raise ValueError(f"{self.model_name} only supports global_pool='avg', got {global_pool!r}.")
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def _head_dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0. else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average over T, H, W, dropout, then the classifier.

        Args:
            x: Feature map ``(N, num_features, T', H', W')``.
            pre_logits: Return the pooled (and dropped-out) features instead of logits.
        """
        x = x.mean(dim=(2, 3, 4))
        x = self._head_dropout(x)
        return x if pre_logits else self._classify(x)

    # --- stages -----------------------------------------------------------------------------
    def _stages(self) -> List[List[nn.Module]]:
        return [[self.get_submodule(name) for name in names] for names in self.stage_names]

    def _run_stage(self, modules: List[nn.Module], x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(_run_modules, x, modules, use_reentrant=False)
        return _run_modules(x, modules)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is a float ``(N, in_chans, T, H, W)`` clip this model can take."""
        check_video_input(x, self.model_name, self.in_chans, self.min_input_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the final feature map ``(N, num_features, T', H', W')``."""
        self.check_input(x)
        for modules in self._stages():
            x = self._run_stage(modules, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)``, or pooled features ``(N, num_features)`` when ``num_classes == 0``."""
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (``torch.utils.checkpoint``, non-reentrant)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay: the stem, then one group per stage
        (``coarse=True``) or per block (``coarse=False``: each module of a stage, or each child of
        a stage module when ``stages_are_block_lists``, like ResNet's ``layerN``)."""
        def pattern(names: Sequence[str]) -> str:
            return r'^(?:' + '|'.join(re.escape(n) for n in names) + r')\.'

        stem, rest = self.stage_names[0], self.stage_names[1:]
        if coarse:
            blocks = [(pattern(names), (i,)) for i, names in enumerate(rest)]
        else:
            flat = []
            for name in (name for names in rest for name in names):
                module = self.get_submodule(name)
                if self.stages_are_block_lists and isinstance(module, nn.Sequential):
                    flat.extend(f'{name}.{child}' for child, _ in module.named_children())
                else:
                    flat.append(name)
            blocks = [(pattern([name]), (i,)) for i, name in enumerate(flat)]
        return dict(stem=pattern(stem), blocks=blocks)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCTHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Run the backbone and return the feature maps at the ends of the selected stages.

        Args:
            x: Input clip batch ``(N, C, T, H, W)``.
            indices: Stages to return: ``None`` = all, an int ``n`` = the last ``n``, or a list of indices.
            norm: Accepted for timm compatibility; these models have no final norm, so it changes nothing.
            stop_early: Stop after the last requested stage.
            output_fmt: ``'NCTHW'``. ``'NCHW'`` is accepted as its alias because timm's
                ``FeatureGetterNet`` passes its channels-first default.
            intermediates_only: Return only the list of intermediates.

        Returns:
            The intermediates (5-D maps), or ``(final_map, intermediates)``.
        """
        if output_fmt not in ('NCTHW', 'NCHW'):
            raise ValueError(f"{self.model_name} outputs channels-first maps: output_fmt must be 'NCTHW', "
                             f'got {output_fmt!r}.')
        self.check_input(x)
        stages = self._stages()
        take_indices, max_index = feature_take_indices(len(stages), indices)
        if stop_early and not torch.jit.is_scripting():
            stages = stages[:max_index + 1]
        intermediates = []
        for i, modules in enumerate(stages):
            x = self._run_stage(modules, x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Replace the stages after the last requested one with ``nn.Identity``.

        Args:
            indices: Stages that will still be taken (same meaning as in :meth:`forward_intermediates`).
            prune_norm: Accepted for timm compatibility (no final norm).
            prune_head: Also remove the classifier.

        Returns:
            The absolute indices that were requested.
        """
        take_indices, max_index = feature_take_indices(len(self.stage_names), indices)
        for names in self.stage_names[max_index + 1:]:
            for name in names:
                parent_name, _, child = name.rpartition('.')
                parent = self.get_submodule(parent_name) if parent_name else self
                setattr(parent, child, nn.Identity())
        if prune_head:
            self.reset_classifier(0)
        return take_indices
