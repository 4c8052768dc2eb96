"""FIMA and the MoCo baseline assembled around any fima_models backbone.

:class:`FimaPretrainer` owns the query encoder f_q (the backbone being pretrained), its momentum
copy f_k, the projector P and its EMA P_k, the motion decoder (FIMA only) and the key queues.
``forward(batch)`` takes one collated batch of :class:`fima_models.transforms.FimaViewTransform`
views and returns the loss terms; :meth:`FimaPretrainer.momentum_update` is called by the
training loop once per optimizer step, before the step's first forward.

Batch layout (N videos, two clips m and n each, S x S pixels, L/2 frames per view)::

    rgb_global  (N, 2, 3, L/2, S, S)      diff_global (N, 2, 3, L/2, S, S)
    diff_local  (N, 2, 2, 3, L/2, S, S)   boxes       (N, 2, 4)

Temporal indices. The decoder works per temporal index t of the backbone map and local segment
t (DESIGN: 2 segments). The query map and the dense keys are brought to ``T_d`` indices:
``T' = 2`` is used as is, ``T' > 2`` is average-pooled to 2 (each index then covers one half
of the clip, like the segments), ``T' = 1`` stays 1 and both segments use that single index
(the cls token's segment embedding tells them apart; the dense loss of both segments then
targets the same keys). Segment ``s`` uses index ``s * T_d // 2``.

MoCo baseline (``method="moco"``): the same pipeline with the global loss only; no decoder,
and the difference views are not encoded.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from train.common.distributed import all_gather_cat
from train.common.precision import to_channels_last_3d
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

#: Defaults of the ``fima`` config section (the paper's values; UCF101 queue sizes).
DEFAULT_FIMA_CONFIG: dict[str, Any] = {
    "temperature": 0.1,
    "momentum": 0.999,
    "embed_dim": 128,
    "proj_hidden": 1024,
    "key_bn_splits": 2,
    "queue_size": 2240,
    "motion_queue_size": 2240,
    "dense_queue_size": 0,
    "dense_queue_keys_per_clip": 16,
    "dense_pos_ratio": 0.7,
    "loss_weights": {"global": 1.0, "dense": 1.0, "frame": 1.0},
    "decoder": {"dim": 512, "heads": 4, "ffn_dim": 512, "layers": 2, "dropout": 0.1},
}


class FimaPretrainer(nn.Module):
    """FIMA (or MoCo) pretraining model around a backbone with ``forward_features`` and ``num_features``.

    Args:
        encoder: the query backbone (``num_classes=0``); its state dict is the pretrained result.
        method: ``"fima"`` or ``"moco"``.
        cfg: ``fima`` config section; missing keys take :data:`DEFAULT_FIMA_CONFIG` values.
        channels_last: feed encoder inputs in ``channels_last_3d`` memory format (convert the
            encoders' weights with :func:`train.common.precision.to_channels_last_3d` too).

    Raises:
        ValueError: for an unknown method or an encoder without ``forward_features``/``num_features``.
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
        """Compute the loss terms for one batch.

        Args:
            batch: collated views (see module docstring); tensors already on the model's device.

        Returns:
            dict with ``loss`` (weighted sum, differentiable), ``loss_global`` and, for FIMA,
            ``loss_dense``, ``loss_frame``, ``dense_valid_frac`` (fraction of predicted cells
            with at least one positive) and ``fg_frac`` (foreground fraction).
        """
        rgb = batch["rgb_global"]
        n = rgb.shape[0]
        x = torch.cat([rgb[:, 0], rgb[:, 1]], dim=0)  # (2N, 3, T, S, S): all m, then all n
        qmap = self.encoder_q.forward_features(self._layout(x))
        q = F.normalize(self.projector.pooled(qmap).float(), dim=1)
        with torch.no_grad():
            kmap_rgb = self._encode_keys(x)
            k = F.normalize(self.projector_k.pooled(kmap_rgb).float(), dim=1)
        q_m, q_n = q[:n], q[n:]
        k_m, k_n = k[:n], k[n:]
        loss_global = global_instance_loss(q_m, q_n, k_m, k_n, self.queue.keys, self.temperature)
        out: dict[str, torch.Tensor] = {"loss_global": loss_global}
        total = self.weights.get("global", 1.0) * loss_global

        if self.method == "fima":
            extra, enqueue_motion, enqueue_dense = self._fima_terms(batch, qmap, kmap_rgb, n)
            total = total + self.weights.get("dense", 1.0) * extra["loss_dense"] + self.weights.get("frame", 1.0) * extra[
                "loss_frame"
            ]
            out.update(extra)
            if self.motion_queue is not None:
                self.motion_queue.enqueue(all_gather_cat(enqueue_motion))
            if self.dense_queue is not None:
                self.dense_queue.enqueue(all_gather_cat(enqueue_dense))
        self.queue.enqueue(all_gather_cat(k))
        out["loss"] = total
        return out

    def _fima_terms(
        self, batch: Mapping[str, torch.Tensor], qmap: torch.Tensor, kmap_rgb: torch.Tensor, n: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        assert self.decoder is not None
        diff = batch["diff_global"]
        local = batch["diff_local"]  # (N, clip, segment, 3, T, S, S)
        boxes = batch["boxes"].float()  # (N, 2, 4)
        with torch.no_grad():
            # all difference views (2N global, then 4N local ordered (clip, segment, sample)) in one
            # shuffled key-encoder pass: one BatchNorm population of difference images, fewer launches
            lx = local.permute(1, 2, 0, *range(3, local.dim())).reshape(-1, *local.shape[3:])
            kmap_all = self._encode_keys(torch.cat([diff[:, 0], diff[:, 1], lx], dim=0))
            kmap_diff, kmap_local = kmap_all[: 2 * n], kmap_all[2 * n :]
            dense_keys = F.normalize(self.projector_k.dense(_to_segments(kmap_diff)).float(), dim=1)  # (2N, D, Td, H, W)
            lkeys = F.normalize(self.projector_k.pooled(kmap_local).float(), dim=1)
            lkeys = lkeys.reshape(2, NUM_SEGMENTS, n, -1).permute(0, 2, 1, 3)  # (clip, N, segment, D)
            fg = foreground_mask(kmap_rgb, kmap_diff)  # (2N, H, W)

        fq = _to_segments(qmap)  # (2N, C, Td, H, W)
        td, h, w = fq.shape[2], fq.shape[3], fq.shape[4]
        t_of = [s * td // NUM_SEGMENTS for s in range(NUM_SEGMENTS)]
        fq_m, fq_n = fq[:n], fq[n:]
        # decoder rows: (direction, segment, sample); direction 0: m -> n, 1: n -> m
        sources, memories, segs = [], [], []
        for src, mem in ((fq_m, fq_n), (fq_n, fq_m)):
            for s in range(NUM_SEGMENTS):
                sources.append(src[:, :, t_of[s]])
                memories.append(mem[:, :, t_of[s]])
                segs.append(torch.full((n,), s, dtype=torch.long, device=qmap.device))
        cls_c, cells_c = self.decoder(torch.cat(sources), torch.cat(memories), torch.cat(segs))
        pred_local = F.normalize(self.projector.pooled(cls_c).float(), dim=1).reshape(2, NUM_SEGMENTS, n, -1)
        pred_dense = F.normalize(self.projector.dense(cells_c[:, :, None]).float(), dim=1)[:, :, 0]
        pred_dense = pred_dense.reshape(2, NUM_SEGMENTS, n, *pred_dense.shape[1:])  # (dir, seg, N, D, H, W)

        keys_by_clip = dense_keys.reshape(2, n, *dense_keys.shape[1:]).permute(0, 1, 3, 2, 4, 5)  # (clip, N, Td, D, H, W)
        fg_by_clip = fg.reshape(2, n, h, w)
        dense_sum = pred_dense.new_zeros(())
        dense_count = pred_dense.new_zeros(())
        frame_terms = []
        for direction in range(2):
            src_clip, tgt_clip = direction, 1 - direction
            pos = dense_positive_mask(
                boxes[:, src_clip], boxes[:, tgt_clip], fg_by_clip[src_clip], fg_by_clip[tgt_clip], h, w, self.pos_ratio
            )
            for s in range(NUM_SEGMENTS):
                loss_sum, count = dense_motion_loss(
                    pred_dense[direction, s],
                    keys_by_clip[tgt_clip],
                    t_of[s],
                    pos,
                    self.dense_queue.keys if self.dense_queue is not None else None,
                    self.temperature,
                )
                dense_sum = dense_sum + loss_sum
                dense_count = dense_count + count
            frame_terms.append(
                frame_motion_loss(
                    pred_local[direction].permute(1, 0, 2),
                    lkeys[tgt_clip],
                    lkeys[src_clip],
                    self.motion_queue.keys if self.motion_queue is not None else None,
                    self.temperature,
                )
            )
        loss_dense = dense_sum / dense_count.clamp_min(1.0)
        loss_frame = 0.5 * (frame_terms[0] + frame_terms[1])
        total_cells = 2 * NUM_SEGMENTS * n * h * w
        terms = {
            "loss_dense": loss_dense,
            "loss_frame": loss_frame,
            "dense_valid_frac": (dense_count / total_cells).detach(),
            "fg_frac": fg.float().mean().detach(),
        }
        enqueue_motion = lkeys.reshape(-1, lkeys.shape[-1])
        enqueue_dense = self._sample_dense_keys(dense_keys)
        return terms, enqueue_motion, enqueue_dense

    def _sample_dense_keys(self, dense_keys: torch.Tensor) -> torch.Tensor:
        """Pick ``dense_queue_keys_per_clip`` random cells (any time index) of each clip's dense keys."""
        if self.dense_queue is None:
            return dense_keys.new_zeros(0, dense_keys.shape[1])
        b, d = dense_keys.shape[:2]
        flat = dense_keys.flatten(2)  # (B, D, Td*H*W)
        k = min(self.dense_keys_per_clip, flat.shape[2])
        idx = torch.rand(b, flat.shape[2], device=flat.device).argsort(dim=1)[:, :k]
        picked = torch.gather(flat, 2, idx[:, None, :].expand(b, d, k))
        return picked.permute(0, 2, 1).reshape(b * k, d)


def _to_segments(fmap: torch.Tensor) -> torch.Tensor:
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
