"""Linear probe: a frozen backbone (BatchNorm in eval mode) and one trained linear layer.

Two ways to train the layer, chosen by ``linear.augment``:

* ``augment: false`` (default, the fast path): the frozen backbone's pooled
  features are extracted **once** -- ``linear.train_clips`` clips spread
  uniformly over every training video, centre-cropped as in the test, each clip
  one training sample -- and cached in ``DIR/features_train.pt``; the linear
  layer is then trained on the cache. Without augmentation the backbone's output
  for a clip never changes, so this trains exactly the same layer as running the
  backbone every step, orders of magnitude faster.
* ``augment: true``: every step decodes a random clip and applies the fine-tune
  augmentation, runs the frozen backbone under ``no_grad`` and trains the layer.

The layer is ``Linear(num_features, C)``, optionally preceded by a parameter-free
``BatchNorm1d(affine=False)`` on the features (``linear.feature_norm: batchnorm``,
as in MAE / MoCo v3 linear probes): it only standardises the features so one
learning rate suits backbones whose feature scales differ. At evaluation it is a
fixed affine map, so it is folded into the linear layer and the final model is a
plain classifier -- the backbone with its own classifier set to the learned layer
-- saved as ``DIR/final.pt`` and tested with the same multi-clip code as ``test``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fima_models.checkpoint import CheckpointError
from train.common.checkpoint import atomic_torch_save, load_checkpoint

from .build import RunContext, build_model, dataset_classes, multiclip_dataset, train_dataset
from .evaluate import clip_outputs
from .finetune import test_and_finish, train_loop

__all__ = ["LinearHead", "LinearProbe", "FeatureDataset", "run_linear"]

_logger = logging.getLogger(__name__)


class LinearHead(nn.Module):
    """Optional parameter-free feature standardisation followed by one linear layer.

    Args:
        num_features: feature size D.
        num_classes: classes C.
        feature_norm: ``"batchnorm"`` (BatchNorm1d without affine parameters) or ``"none"``.
    """

    def __init__(self, num_features: int, num_classes: int, feature_norm: str = "batchnorm") -> None:
        super().__init__()
        if feature_norm not in ("batchnorm", "none"):
            raise ValueError(f"linear.feature_norm must be 'batchnorm' or 'none', got {feature_norm!r}")
        self.norm: nn.Module = (
            nn.BatchNorm1d(num_features, affine=False) if feature_norm == "batchnorm" else nn.Identity()
        )
        self.fc = nn.Linear(num_features, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]`` of pooled features ``[N, D]``."""
        return self.fc(self.norm(features.float()))

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``[C, D]`` and bias ``[C]`` of the single linear map equal to this head in eval mode."""
        weight, bias = self.fc.weight.detach().clone(), self.fc.bias.detach().clone()
        if isinstance(self.norm, nn.BatchNorm1d):
            scale = torch.rsqrt(self.norm.running_var + self.norm.eps)
            weight = weight * scale[None, :]
            bias = bias - weight @ self.norm.running_mean
        return weight, bias


class LinearProbe(nn.Module):
    """A frozen backbone (always in eval mode, no gradients) feeding a :class:`LinearHead`.

    Args:
        backbone: model built with ``num_classes=0`` (returns pooled features).
        head: the trainable head.
    """

    def __init__(self, backbone: nn.Module, head: LinearHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "LinearProbe":
        """Set the head's mode; the backbone (and its BatchNorm) stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits of clips ``[N, 3, T, S, S]``."""
        with torch.no_grad():
            features = self.backbone(clips)
        return self.head(features)


class FeatureDataset(Dataset):
    """Cached features as a data set of ``(feature [D], label)``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"{features.shape[0]} features but {labels.shape[0]} labels")
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.features[index], int(self.labels[index])

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch: ``features[indices]`` and the labels as int64 (what collating items gives)."""
        return self.features[indices], self.labels[indices].long()


def _read_cache(cache: Path) -> dict[str, Any] | None:
    """The feature cache's content, or None (with a warning) when it is truncated or not a cache."""
    try:
        saved = load_checkpoint(cache)
        features, labels = saved["features"], saved["labels"]
        if not (isinstance(features, torch.Tensor) and isinstance(labels, torch.Tensor)
                and features.ndim == 2 and len(features) == len(labels)):
            raise ValueError("features and labels do not match")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("it holds non-finite features")
    except (CheckpointError, ValueError, KeyError, TypeError) as err:
        _logger.warning("feature cache %s is unusable (%s); extracting the features again", cache, err)
        return None
    return saved


def _cached_train_features(ctx: RunContext, backbone: nn.Module, weights: dict[str, Any]) -> FeatureDataset:
    """Extract (or reload) the frozen backbone's features of the training clips."""
    cfg = ctx.cfg
    clips = int(cfg["linear"]["train_clips"])
    cache = ctx.out_dir / "features_train.pt"
    key = {"model": str(cfg["model"]), "sha256": weights.get("sha256"), "clips": clips, "data": cfg["data"],
           "dataset": cfg["dataset"], "root": str(cfg["root"]), "split": cfg.get("split")}
    if cache.is_file():
        saved = _read_cache(cache)
        if saved is not None and saved.get("key") == repr(key):
            _logger.info("reusing cached training features %s", cache)
            return FeatureDataset(saved["features"], saved["labels"])
        if saved is not None:
            _logger.info("cached features %s were made with other settings; extracting again", cache)
    dataset = multiclip_dataset(cfg, backbone, True, clips)
    feats, labels = clip_outputs(backbone, dataset, ctx, int(cfg["test"]["batch_size"]), int(cfg["data"]["workers"]),
                                 desc="features")
    feats = feats.flatten(0, 1)  # every clip is one training sample
    labels = labels.repeat_interleave(clips)
    if ctx.is_main:
        atomic_torch_save({"key": repr(key), "features": feats, "labels": labels}, cache)
    _logger.info("cached %d training clip features (%d videos x %d clips, dim %d)", feats.shape[0],
             feats.shape[0] // clips, clips, feats.shape[1])
    return FeatureDataset(feats, labels)


def run_linear(ctx: RunContext) -> dict[str, float]:
    """``python -m train linear``: train a linear layer on the frozen backbone, then the multi-clip test.

    Returns:
        The metrics written to ``results.json``.
    """
    cfg = ctx.cfg
    section = cfg["linear"]
    num_classes = len(dataset_classes(cfg))
    backbone, weights = build_model(cfg, 0)
    backbone.to(ctx.device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    head = LinearHead(int(backbone.num_features), num_classes, str(section.get("feature_norm", "batchnorm")))
    if bool(section.get("augment", False)):
        dataset: Dataset = train_dataset(cfg, backbone)
        _logger.info("linear probe with augmentation on %d training videos", len(dataset))
        probe, stats = train_loop(ctx, LinearProbe(backbone, head), dataset, section, "linear", num_classes)
        head = probe.head
    else:
        dataset = _cached_train_features(ctx, backbone, weights)
        head, stats = train_loop(ctx, head, dataset, section, "linear", num_classes, video_input=False)
    # fold the head into the backbone's own classifier: a plain timm classifier model
    weight, bias = head.folded()
    backbone.reset_classifier(num_classes)
    classifier = backbone.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(weight.view_as(classifier.weight))
        classifier.bias.copy_(bias.view_as(classifier.bias))
    return test_and_finish(ctx, backbone.to(ctx.device).eval(), "linear", weights, stats, num_classes)
