"""FIMA and the MoCo baseline assembled around any fima_models backbone.

:class:`FimaPretrainer` owns the query encoder f_q (the backbone being pretrained), its momentum
copy f_k, the projector P and its EMA P_k, the motion decoder (FIMA only) and the key queues.
``forward(batch)`` takes one collated batch of :class:`train.fima.views.FimaViewTransform`
views and returns the loss terms; :meth:`FimaPretrainer.momentum_update` is called by the
training loop once per optimizer step, before the step's first forward.

With the defaults, and a backbone map with two temporal indices (16-frame views of
R(2+1)D-18, R3D-18, I3D, S3D), one step computes the FIMA authors' step (github.com/ZMHH-H/FIMA,
``moco/builder.py``): the same encoder calls (hence the same BatchNorm batches), decoder, losses,
averaging and queue order. docs/pretraining.md ("Fidelity") lists what was compared.

Batch layout (N videos, two clips m and n each, S x S pixels, L/2 frames per view)::

    rgb_global  (N, 2, 3, L/2, S, S)      diff_global (N, 2, 3, L/2, S, S)
    diff_local  (N, 2, 2, 3, L/2, S, S)   boxes       (N, 2, 4)

Encoder calls, one view type over the batch each (BatchNorm statistics per view type): per clip
(m, then n) f_k(RGB global), f_k(diff global), f_k(diff local 1), f_k(diff local 2); then f_q(m),
f_q(n). MoCo runs only f_k(RGB global) per clip and the two f_q calls. Option
``fused_encoder_passes`` (off; faster, other BatchNorm statistics): f_k on both clips' RGB views in
one call and on all six difference views in another, f_q on both clips in one call.

Temporal indices. The decoder works per temporal index t of the backbone map, and local segment
s is predicted at index ``s * T_d // 2``. The authors' case is ``T' = 2`` (``T_d = 2``: segment s at
index s). Generalisations (not in the authors' code, which requires ``T' = 2``): ``T' > 2`` is
average-pooled over time to 2 indices (query map and difference key map; each index then covers
one half of the clip, like the segments); ``T' = 1`` stays 1, both segments are decoded from that
index (identical predictions unless ``decoder.segment_embedding`` is on) and the dense loss of
both targets the same keys.

MoCo baseline (``method="moco"``): the same pipeline with the global loss only; no decoder,
and the difference views are not encoded.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fima_models._utils import to_channels_last_3d
from train.common.distributed import all_gather_cat
from train.fima.heads import MotionDecoder, Projector
from train.fima.losses import (
    dense_motion_loss,
    dense_positive_mask,
    foreground_mask,
    frame_motion_loss,
    global_instance_loss,
)
from train.fima.momentum import FeatureQueue, momentum_update, shuffled_forward

__all__ = ["FimaPretrainer", "DEFAULT_FIMA_CONFIG", "METHODS"]

METHODS = ("fima", "moco")
NUM_SEGMENTS = 2

#: Defaults of the ``fima`` config section: the authors' values (UCF101 queue sizes). Options that
#: change the method (``dense_queue_keys_per_clip > 0``, ``decoder.segment_embedding``,
#: ``key_bn_splits > 1``, ``fused_encoder_passes``) are off.
DEFAULT_FIMA_CONFIG: dict[str, Any] = {
    "temperature": 0.1,
    "momentum": 0.999,
    "embed_dim": 128,
    "proj_hidden": 1024,
    "key_bn_splits": 1,
    "queue_size": 2240,
    "motion_queue_size": 2240,
    "dense_queue_size": 0,
    "dense_queue_keys_per_clip": 0,
    "dense_pos_ratio": 0.7,
    "fused_encoder_passes": False,
    "loss_weights": {"global": 1.0, "dense": 1.0, "frame": 1.0},
    "decoder": {"dim": 512, "heads": 4, "ffn_dim": 512, "layers": 2, "dropout": 0.1, "segment_embedding": False},
}


class ClipKeys(NamedTuple):
    """Key-side outputs for one clip of every sample (no gradient)."""

    rgb_map: torch.Tensor  #: (N, C, T', H, W) f_k map of the RGB global view
    key: torch.Tensor  #: (N, D) pooled, projected, normalised RGB key
    diff_map: torch.Tensor | None  #: (N, C, T', H, W) f_k map of the difference global view
    dense: torch.Tensor | None  #: (N, D, T_d, H, W) normalised dense motion keys
    local: torch.Tensor | None  #: (N, S, D) normalised local (segment) motion keys


class FimaPretrainer(nn.Module):
    """FIMA (or MoCo) pretraining model around a backbone with ``forward_features`` and ``num_features``.

    Args:
        encoder: the query backbone (``num_classes=0``); its state dict is the pretrained result.
        method: ``"fima"`` or ``"moco"``.
        cfg: ``fima`` config section; missing keys take :data:`DEFAULT_FIMA_CONFIG` values.
        channels_last: feed encoder inputs in ``channels_last_3d`` memory format (convert the
            encoders' weights with :func:`fima_models._utils.to_channels_last_3d` too).

    Raises:
        ValueError: for an unknown method, an encoder without ``forward_features``/``num_features``
            or a negative ``dense_queue_keys_per_clip``.
    """

    def __init__(
        self, encoder: nn.Module, method: str = "fima", cfg: Mapping[str, Any] | None = None, channels_last: bool = False
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown pretraining method {method!r}; set method to one of {METHODS}")
        if not hasattr(encoder, "forward_features") or not hasattr(encoder, "num_features"):
            raise ValueError("the encoder must be a fima_models backbone with forward_features() and num_features")
        c = _with_defaults(cfg or {})
        self.cfg = c
        self.method = method
        self.channels_last = channels_last
        self.temperature = float(c["temperature"])
        self.momentum = float(c["momentum"])
        self.key_bn_splits = int(c["key_bn_splits"])
        self.pos_ratio = float(c["dense_pos_ratio"])
        self.weights = {k: float(v) for k, v in c["loss_weights"].items()}
        self.dense_keys_per_clip = int(c["dense_queue_keys_per_clip"])
        self.fused_passes = bool(c["fused_encoder_passes"])
        if self.dense_keys_per_clip < 0:
            raise ValueError(
                f"fima.dense_queue_keys_per_clip must be >= 0 (0: every cell, as the authors), got {self.dense_keys_per_clip}"
            )
        feat = int(encoder.num_features)
        dim = int(c["embed_dim"])

        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        self.projector = Projector(feat, int(c["proj_hidden"]), dim)
        self.projector_k = copy.deepcopy(self.projector)
        for p in list(self.encoder_k.parameters()) + list(self.projector_k.parameters()):
            p.requires_grad_(False)
        self.queue = FeatureQueue(int(c["queue_size"]), dim)
        self.decoder: MotionDecoder | None = None
        self.motion_queue: FeatureQueue | None = None
        self.dense_queue: FeatureQueue | None = None
        if method == "fima":
            d = c["decoder"]
            self.decoder = MotionDecoder(
                feat,
                dim=int(d["dim"]),
                heads=int(d["heads"]),
                ffn_dim=int(d["ffn_dim"]),
                layers=int(d["layers"]),
                dropout=float(d["dropout"]),
                segment_embedding=bool(d["segment_embedding"]),
                num_segments=NUM_SEGMENTS,
            )
            if int(c["motion_queue_size"]) > 0:
                self.motion_queue = FeatureQueue(int(c["motion_queue_size"]), dim)
            if int(c["dense_queue_size"]) > 0:
                self.dense_queue = FeatureQueue(int(c["dense_queue_size"]), dim)

    # ----------------------------------------------------------------- helpers
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The query encoder's state dict with the backbone's own key names (the pretrained weights).

        Tensors are contiguous copies (channels_last_3d weights included), as safetensors requires.
        """
        return {k: v.detach().contiguous().clone() for k, v in self.encoder_q.state_dict().items()}

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA update of f_k and P_k from f_q and P (call once per optimizer step, before its forwards)."""
        momentum_update(self.encoder_q, self.encoder_k, self.momentum)
        momentum_update(self.projector, self.projector_k, self.momentum)

    def train(self, mode: bool = True) -> "FimaPretrainer":
        """Set training mode; the key encoder always stays in train mode (its BatchNorm uses batch statistics)."""
        super().train(mode)
        self.encoder_k.train(True)
        return self

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_last_3d(x) if self.channels_last else x  # type: ignore[return-value]

    @torch.no_grad()
    def _encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        return shuffled_forward(self.encoder_k.forward_features, self._layout(x), self.key_bn_splits).float()

    # ----------------------------------------------------------------- forward
    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the loss terms for one batch (and update the queues, as the authors' step does).

        Args:
            batch: collated views (see module docstring); tensors already on the model's device.

        Returns:
            dict with ``loss`` (weighted sum, differentiable), ``loss_global`` and, for FIMA,
            ``loss_dense``, ``loss_frame``, ``dense_valid_frac`` (fraction of predicted cells
            with at least one positive) and ``fg_frac`` (foreground fraction).
        """
        rgb = batch["rgb_global"]
        if self.fused_passes:
            keys = self._fused_keys(batch)
            qmaps = list(self.encoder_q.forward_features(self._layout(torch.cat([rgb[:, 0], rgb[:, 1]]))).chunk(2))
        else:
            keys = [self._clip_keys(batch, clip) for clip in range(2)]  # all of m's key views, then n's
            qmaps = [self.encoder_q.forward_features(self._layout(rgb[:, clip])) for clip in range(2)]
        q_m, q_n = (F.normalize(self.projector.pooled(qmap).float(), dim=1) for qmap in qmaps)
        loss_global = global_instance_loss(q_m, q_n, keys[0].key, keys[1].key, self.queue, self.temperature)
        out: dict[str, torch.Tensor] = {"loss_global": loss_global}
        total = self.weights.get("global", 1.0) * loss_global
        if self.method == "fima":
            extra = self._fima_terms(batch, qmaps, keys)
            total = total + self.weights.get("dense", 1.0) * extra["loss_dense"]
            total = total + self.weights.get("frame", 1.0) * extra["loss_frame"]
            out.update(extra)
        out["loss"] = total
        return out

    @torch.no_grad()
    def _clip_keys(self, batch: Mapping[str, torch.Tensor], clip: int) -> ClipKeys:
        """One clip's keys, one key-encoder call per view type (the authors' BatchNorm batches)."""
        rgb_map = self._encode_keys(batch["rgb_global"][:, clip])
        if self.method != "fima":
            return self._keys_from_maps(rgb_map, None, [])
        diff_map = self._encode_keys(batch["diff_global"][:, clip])
        local_maps = [self._encode_keys(batch["diff_local"][:, clip, s]) for s in range(NUM_SEGMENTS)]
        return self._keys_from_maps(rgb_map, diff_map, local_maps)

    @torch.no_grad()
    def _fused_keys(self, batch: Mapping[str, torch.Tensor]) -> list[ClipKeys]:
        """Option ``fused_encoder_passes``: both clips' RGB views in one key-encoder call, all difference views
        (global and local, both clips) in another -- fewer, larger calls, other BatchNorm statistics."""
        rgb, diff, local = batch["rgb_global"], batch["diff_global"], batch["diff_local"]
        rgb_maps = self._encode_keys(torch.cat([rgb[:, 0], rgb[:, 1]])).chunk(2)
        if self.method != "fima":
            return [self._keys_from_maps(rgb_maps[c], None, []) for c in range(2)]
        views = [diff[:, 0], diff[:, 1]] + [local[:, c, s] for c in range(2) for s in range(NUM_SEGMENTS)]
        maps = self._encode_keys(torch.cat(views)).chunk(len(views))
        return [
            self._keys_from_maps(rgb_maps[c], maps[c], list(maps[2 + c * NUM_SEGMENTS : 2 + (c + 1) * NUM_SEGMENTS]))
            for c in range(2)
        ]

    @torch.no_grad()
    def _keys_from_maps(
        self, rgb_map: torch.Tensor, diff_map: torch.Tensor | None, local_maps: list[torch.Tensor]
    ) -> ClipKeys:
        key = F.normalize(self.projector_k.pooled(rgb_map).float(), dim=1)
        if diff_map is None:
            return ClipKeys(rgb_map, key, None, None, None)
        dense = F.normalize(self.projector_k.dense(_to_time_indices(diff_map)).float(), dim=1)
        local = [F.normalize(self.projector_k.pooled(m).float(), dim=1) for m in local_maps]
        return ClipKeys(rgb_map, key, diff_map, dense, torch.stack(local, dim=1))

    def _fima_terms(
        self, batch: Mapping[str, torch.Tensor], qmaps: list[torch.Tensor], keys: list[ClipKeys]
    ) -> dict[str, torch.Tensor]:
        assert self.decoder is not None
        boxes = batch["boxes"].float()  # (N, 2, 4)
        fq = [_to_time_indices(qmap) for qmap in qmaps]  # (N, C, T_d, H, W) per clip
        n, td, h, w = fq[0].shape[0], fq[0].shape[2], fq[0].shape[3], fq[0].shape[4]
        t_of = [s * td // NUM_SEGMENTS for s in range(NUM_SEGMENTS)]
        # one decoder call for all rows (direction, segment, sample); direction 0 predicts n from
        # (m, n), direction 1 predicts m from (n, m). Rows are independent: same numbers as four calls.
        sources, memories, segments = [], [], []
        for src, mem in ((fq[0], fq[1]), (fq[1], fq[0])):
            for s in range(NUM_SEGMENTS):
                sources.append(src[:, :, t_of[s]])
                memories.append(mem[:, :, t_of[s]])
                segments.append(torch.full((n,), s, dtype=torch.long, device=src.device))
        cls_c, cells_c = self.decoder(torch.cat(sources), torch.cat(memories), torch.cat(segments))
        pred_local = F.normalize(self.projector.pooled(cls_c).float(), dim=1).reshape(2, NUM_SEGMENTS, n, -1)
        pred_dense = F.normalize(self.projector.dense(cells_c[:, :, None]).float(), dim=1)[:, :, 0]
        pred_dense = pred_dense.reshape(2, NUM_SEGMENTS, n, *pred_dense.shape[1:])  # (dir, seg, N, D, H, W)

        with torch.no_grad():
            fg = [foreground_mask(k.rgb_map, k.diff_map) for k in keys]  # (N, H, W) per clip
        motion_negatives = self.motion_queue.keys if self.motion_queue is not None else None
        dense_negatives = self.dense_queue.keys if self.dense_queue is not None else None
        dense_terms, frame_terms = [], []
        valid_cells = pred_dense.new_zeros(())
        for direction in range(2):
            src_clip, tgt_clip = direction, 1 - direction
            target, source = keys[tgt_clip], keys[src_clip]
            assert target.dense is not None and target.local is not None and source.local is not None
            frame_terms.append(
                frame_motion_loss(
                    pred_local[direction].transpose(0, 1), target.local, source.local, motion_negatives, self.temperature
                )
            )
            pos = dense_positive_mask(
                boxes[:, src_clip], boxes[:, tgt_clip], fg[src_clip], fg[tgt_clip], h, w, self.pos_ratio
            )
            valid_cells = valid_cells + NUM_SEGMENTS * pos.any(dim=2).sum()
            target_dense = target.dense.transpose(1, 2)  # (N, T_d, D, H, W)
            for s in range(NUM_SEGMENTS):
                dense_terms.append(
                    dense_motion_loss(pred_dense[direction, s], target_dense, t_of[s], pos, dense_negatives, self.temperature)
                )
        self._enqueue_motion_keys(keys)
        return {
            "loss_dense": torch.stack(dense_terms).mean(),
            "loss_frame": torch.stack(frame_terms).mean(),
            "dense_valid_frac": (valid_cells / (2 * NUM_SEGMENTS * n * h * w)).detach(),
            "fg_frac": torch.stack(fg).float().mean(),
        }

    @torch.no_grad()
    def _enqueue_motion_keys(self, keys: list[ClipKeys]) -> None:
        """Local keys ``[n seg 1, n seg 2, m seg 1, m seg 2]`` into the motion queue; dense keys into the
        dense queue, per (clip n, then m; time index) in cell order ``(sample, row, column)`` as the authors do."""
        m, n = keys
        assert m.local is not None and n.local is not None and m.dense is not None and n.dense is not None
        if self.motion_queue is not None:
            local = torch.cat([n.local[:, 0], n.local[:, 1], m.local[:, 0], m.local[:, 1]])
            self.motion_queue.enqueue(all_gather_cat(local))
        if self.dense_queue is None:
            return
        for clip in (n, m):
            dense = clip.dense  # (N, D, T_d, H, W)
            if self.dense_keys_per_clip > 0:
                self.dense_queue.enqueue(all_gather_cat(self._sample_dense_keys(dense)))
                continue
            for t in range(dense.shape[2]):
                self.dense_queue.enqueue(all_gather_cat(dense[:, :, t].permute(0, 2, 3, 1).reshape(-1, dense.shape[1])))

    def _sample_dense_keys(self, dense_keys: torch.Tensor) -> torch.Tensor:
        """Option ``dense_queue_keys_per_clip = k > 0``: k random cells (any time index) of each clip's dense keys."""
        b, d = dense_keys.shape[:2]
        flat = dense_keys.flatten(2)  # (B, D, Td*H*W)
        k = min(self.dense_keys_per_clip, flat.shape[2])
        idx = torch.rand(b, flat.shape[2], device=flat.device).argsort(dim=1)[:, :k]
        picked = torch.gather(flat, 2, idx[:, None, :].expand(b, d, k))
        return picked.permute(0, 2, 1).reshape(b * k, d)


def _to_time_indices(fmap: torch.Tensor) -> torch.Tensor:
    """Bring a ``(B, C, T', H, W)`` map to ``T_d`` temporal indices (T'=1 -> 1, T'=2 -> 2, T'>2 -> 2 by averaging)."""
    t = fmap.shape[2]
    if t <= NUM_SEGMENTS:
        return fmap
    return F.adaptive_avg_pool3d(fmap, (NUM_SEGMENTS, fmap.shape[3], fmap.shape[4]))


def _with_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(cfg) - set(DEFAULT_FIMA_CONFIG)
    if unknown:
        raise ValueError(f"unknown fima config keys {sorted(unknown)}; valid keys: {sorted(DEFAULT_FIMA_CONFIG)}")
    out = copy.deepcopy(DEFAULT_FIMA_CONFIG)
    for key, value in cfg.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out
