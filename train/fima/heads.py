"""FIMA's trainable heads: the projector P and the motion decoder.

- :class:`Projector` -- two 1x1x1 convolutions ``C -> hidden (1024) -> ReLU -> out (128)``. Applied
  to the time-and-space average of a map it gives one embedding per clip (``pooled``); applied
  to every ``(t, h, w)`` cell it gives dense embeddings (``dense``).
- :class:`MotionDecoder` -- predicts clip n's motion from clip m's appearance features: 1x1 conv
  ``C -> d`` on both maps' cells, 2-D sine positional encoding, a learnable cls token (plus a
  learnable per-segment embedding, see below), a pre-norm TransformerDecoder (target: ``[cls;
  tokens of m at t]``, memory: tokens of n at t), and a 1x1 conv ``d -> C`` back to backbone
  width, so the projector turns its outputs into motion embeddings.

The per-segment embedding added to the cls token tells the decoder which local segment it
predicts. With a backbone map of ``T' = 2`` it is redundant with the temporal index (the inputs
already differ); with ``T' = 1`` (short clips, small test backbones) both segments would
otherwise receive identical inputs and could never be told apart.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Projector", "MotionDecoder", "sine_position_encoding"]


class Projector(nn.Module):
    """Projection head P: 1x1x1 conv ``in -> hidden``, ReLU, 1x1x1 conv ``hidden -> out``.

    Args:
        in_dim: backbone channels C.
        hidden_dim: hidden width (1024 in FIMA).
        out_dim: embedding width (128 in FIMA).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 128) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.fc1 = nn.Conv3d(in_dim, hidden_dim, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv3d(hidden_dim, out_dim, kernel_size=1)

    def dense(self, fmap: torch.Tensor) -> torch.Tensor:
        """Project every cell: ``(N, C, T, H, W) -> (N, out, T, H, W)``."""
        return self.fc2(self.act(self.fc1(fmap)))

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        """Average over time and space, then project: ``(N, C, T, H, W)`` or ``(N, C)`` -> ``(N, out)``."""
        if fmap.dim() == 2:
            x = fmap[:, :, None, None, None]
        else:
            x = fmap.mean(dim=(2, 3, 4), keepdim=True)
        return self.dense(x).flatten(1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`pooled` (one embedding per clip)."""
        return self.pooled(fmap)


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """2-D sine/cosine position encoding (DETR style) of an ``height x width`` grid.

    Half the channels encode the row, half the column; each half is ``[sin(p * f_k), cos(p * f_k)]``
    with ``p`` the normalised position ``(index + 0.5) / size * 2 pi`` and frequencies
    ``f_k = 10000 ** (-2k / (dim / 2))``.

    Args:
        height: rows H.
        width: columns W.
        dim: encoding width (divisible by 4).
        device: output device.

    Returns:
        ``(H * W, dim)`` float tensor, row-major cells.

    Raises:
        ValueError: if ``dim`` is not divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"positional encoding width must be divisible by 4, got {dim}; change decoder.dim")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    ey = torch.cat([torch.sin(ys[:, None] * freqs), torch.cos(ys[:, None] * freqs)], dim=1)  # (H, dim/2)
    ex = torch.cat([torch.sin(xs[:, None] * freqs), torch.cos(xs[:, None] * freqs)], dim=1)  # (W, dim/2)
    grid = torch.cat([ey[:, None, :].expand(height, width, -1), ex[None, :, :].expand(height, width, -1)], dim=-1)
    return grid.reshape(height * width, dim)


class MotionDecoder(nn.Module):
    """Predict clip n's dense and segment-level motion features from clip m's features.

    Args:
        in_dim: backbone channels C.
        dim: decoder width d (512 in FIMA).
        heads: attention heads (4).
        ffn_dim: feed-forward width (512).
        layers: decoder layers (2).
        dropout: dropout (0.1).
        num_segments: local segments per clip (2); each has its own cls offset.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int = 512,
        heads: int = 4,
        ffn_dim: int = 512,
        layers: int = 2,
        dropout: float = 0.1,
        num_segments: int = 2,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder.dim {dim} must be divisible by decoder.heads {heads}")
        self.dim = dim
        self.num_segments = num_segments
        self.in_proj = nn.Conv2d(in_dim, dim, kernel_size=1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.segment_embed = nn.Parameter(torch.zeros(num_segments, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.segment_embed, std=0.02)
        layer = nn.TransformerDecoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=ffn_dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=layers, norm=nn.LayerNorm(dim))
        self.out_proj = nn.Conv2d(dim, in_dim, kernel_size=1)

    def _tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        b, _, h, w = fmap.shape
        x = self.in_proj(fmap).flatten(2).transpose(1, 2)  # (B, HW, d)
        return x + sine_position_encoding(h, w, self.dim, fmap.device).to(x.dtype)[None]

    def forward(
        self, source: torch.Tensor, memory: torch.Tensor, segment: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of (source, memory) pairs.

        Args:
            source: ``(B, C, H, W)`` query-encoder features of clip m at one temporal index.
            memory: ``(B, C, H, W)`` query-encoder features of clip n at the same index.
            segment: ``(B,)`` long, the local segment each row predicts.

        Returns:
            ``(cls, cells)``: ``(B, C)`` segment prediction and ``(B, C, H, W)`` dense prediction,
            both in backbone width (apply the projector next).
        """
        b, c, h, w = source.shape
        tgt = self._tokens(source)
        mem = self._tokens(memory)
        cls = self.cls_token.expand(b, -1, -1) + self.segment_embed[segment][:, None, :].to(tgt.dtype)
        out = self.decoder(torch.cat([cls.to(tgt.dtype), tgt], dim=1), mem)
        cls_out = out[:, 0]
        cells = out[:, 1:].transpose(1, 2).reshape(b, self.dim, h, w)
        cls_c = self.out_proj(cls_out[:, :, None, None]).flatten(1)
        return cls_c, self.out_proj(cells)
