"""FIMA's trainable heads: the projector P and the motion decoder.

- :class:`Projector` -- two 1x1x1 convolutions ``C -> hidden (1024) -> ReLU -> out (128)``. Applied
  to the time-and-space average of a map it gives one embedding per clip (``pooled``); applied
  to every ``(t, h, w)`` cell it gives dense embeddings (``dense``).
- :class:`MotionDecoder` -- predicts clip n's motion at one temporal index from the query-encoder
  features of clips m and n at that index, as the FIMA authors' decoder does: a 1x1 conv ``C -> d``
  on every cell, the 1-D sinusoidal encoding of the token index added to the cell tokens, target
  ``[cls; tokens of m]`` (cls: one learnable vector, zero-initialised, no position encoding),
  memory ``tokens of n``, pre-norm layers of cross-attention + feed-forward **without
  self-attention** and without a final LayerNorm, then a 1x1 conv ``d -> C`` back to backbone
  width (the projector turns the outputs into motion embeddings).

Without self-attention every output token depends only on itself and the memory: the cls output
is a function of n's tokens alone, and each predicted cell of m attends to n's cells only.

Option (off by default, not in the authors' method): ``segment_embedding`` adds a learnable
per-segment vector to the cls token. It only matters for backbone maps with one temporal index
(``T' = 1``), where both local segments are decoded from identical inputs and could otherwise never
be told apart; with ``T' = 2`` the inputs already differ.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Projector", "MotionDecoder", "CrossAttentionLayer", "sinusoidal_position_encoding"]


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


def sinusoidal_position_encoding(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """The standard 1-D sinusoidal encoding of the token indices ``p = 0 .. length - 1``.

    Channel ``2i`` is ``sin(p / 10000 ** (2i / dim))``, channel ``2i + 1`` the cosine of the same
    argument (computed in float32 in this order, so the numbers equal the FIMA authors' table).

    Args:
        length: number of tokens.
        dim: encoding width (even).
        device: output device.

    Returns:
        ``(length, dim)`` float32 tensor.

    Raises:
        ValueError: if ``dim`` is odd.
    """
    if dim % 2:
        raise ValueError(f"the position encoding needs an even width, got decoder.dim={dim}; use an even decoder.dim")
    angles = torch.arange(length, dtype=torch.float32, device=device)[:, None] / torch.pow(
        10000.0, torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim
    )
    enc = torch.empty(length, dim, dtype=torch.float32, device=device)
    enc[:, 0::2] = torch.sin(angles)
    enc[:, 1::2] = torch.cos(angles)
    return enc


class CrossAttentionLayer(nn.Module):
    """One pre-norm decoder layer without self-attention.

    ``x = x + Dropout(CrossAttention(LN(x), memory))``; ``x = x + Dropout(FFN(LN(x)))`` with
    ``FFN = Linear -> ReLU -> Dropout -> Linear``. The attention weights get dropout too.

    Args:
        dim: token width d.
        heads: attention heads.
        ffn_dim: feed-forward hidden width.
        dropout: dropout probability.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_drop = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_drop = nn.Dropout(dropout)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, L, d)`` target tokens, ``memory``: ``(B, M, d)``; returns ``(B, L, d)``."""
        x = x + self.attn_drop(self.cross_attn(self.attn_norm(x), memory, memory, need_weights=False)[0])
        return x + self.out_drop(self.ffn_out(self.ffn_drop(F.relu(self.ffn_in(self.ffn_norm(x))))))


class MotionDecoder(nn.Module):
    """Predict clip n's segment and dense motion at one temporal index from clips m and n.

    Args:
        in_dim: backbone channels C.
        dim: decoder width d (512 in FIMA).
        heads: attention heads (4).
        ffn_dim: feed-forward width (512).
        layers: decoder layers (2); they start as copies of one initialised layer, as in the
            authors' code (and ``nn.TransformerDecoder``).
        dropout: dropout (0.1).
        segment_embedding: add a learnable per-segment vector to cls (option, see module docstring).
        num_segments: local segments per clip (2), the rows of the segment embedding.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int = 512,
        heads: int = 4,
        ffn_dim: int = 512,
        layers: int = 2,
        dropout: float = 0.1,
        segment_embedding: bool = False,
        num_segments: int = 2,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder.dim {dim} must be divisible by decoder.heads {heads}")
        self.dim = dim
        self.embed_in = nn.Conv2d(in_dim, dim, kernel_size=1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.segment_embed: nn.Parameter | None = None
        if segment_embedding:
            self.segment_embed = nn.Parameter(torch.zeros(num_segments, dim))
            nn.init.trunc_normal_(self.segment_embed, std=0.02)
        layer = CrossAttentionLayer(dim, heads, ffn_dim, dropout)
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(layers)])
        self.embed_out = nn.Conv2d(dim, in_dim, kernel_size=1)

    def _tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        x = self.embed_in(fmap).flatten(2).transpose(1, 2)  # (B, HW, d), row-major cells
        return x + sinusoidal_position_encoding(x.shape[1], self.dim, fmap.device).to(x.dtype)[None]

    def forward(
        self, source: torch.Tensor, memory: torch.Tensor, segment: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of (source, memory) pairs.

        Args:
            source: ``(B, C, H, W)`` query-encoder features of clip m at one temporal index.
            memory: ``(B, C, H, W)`` query-encoder features of clip n at the same index.
            segment: ``(B,)`` long, the local segment each row predicts; used only with
                ``segment_embedding``.

        Returns:
            ``(cls, cells)``: ``(B, C)`` segment prediction and ``(B, C, H, W)`` dense prediction,
            both in backbone width (apply the projector next).

        Raises:
            ValueError: if the decoder has a segment embedding and ``segment`` is None.
        """
        b, _, h, w = source.shape
        tgt = self._tokens(source)
        mem = self._tokens(memory)
        cls = self.cls_token.to(tgt.dtype).expand(b, -1, -1)
        if self.segment_embed is not None:
            if segment is None:
                raise ValueError("this decoder has a segment embedding: pass the segment index of every row")
            cls = cls + self.segment_embed[segment][:, None, :].to(tgt.dtype)
        x = torch.cat([cls, tgt], dim=1)
        for layer in self.layers:
            x = layer(x, mem)
        out = self.embed_out(x.transpose(1, 2)[:, :, :, None])[:, :, :, 0]  # (B, C, 1 + HW)
        return out[:, :, 0], out[:, :, 1:].reshape(b, -1, h, w)
