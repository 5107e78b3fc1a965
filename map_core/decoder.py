"""The row-wise autoregressive decoder of MAP.

Tokens are grouped into rows of ``row_len`` consecutive tokens (one image row of patches; sqrt(G)
point groups). A token of row r attends to every token of rows 0..r: tokens of a row see each
other and all earlier rows, later rows are hidden. ``causal=False`` gives a plain MAE decoder.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .layers import CrossNormBlock, TransformerBlock


def row_causal_mask(length: int, row_len: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """bool (length, length): entry [q, k] is True when query q may attend to key k,
    i.e. ``k // row_len <= q // row_len``."""
    if row_len <= 0:
        raise ValueError(f"row_len must be positive, got {row_len}")
    row = torch.arange(length, device=device) // row_len
    return row[None, :] <= row[:, None]


class ARDecoder(nn.Module):
    """A stack of Transformer blocks + final LayerNorm with the row-causal mask.

    x, pos: (B, L, C) -> (B, L, C). ``pos_every_block`` adds ``pos`` before every block
    (Point-MAE style) instead of once at the input (MAE / MAP 2D style). ``block`` is
    ``"vit"`` (timm names: ``blocks.{k}.attn.qkv``) or ``"cross_norm"`` (MAP 2D names:
    ``blocks.{k}.attn2.q``/``kv`` with ``norm2_1``/``norm2_2``).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        row_len: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        causal: bool = True,
        pos_every_block: bool = False,
        block: str = "vit",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        blocks = {"vit": TransformerBlock, "cross_norm": CrossNormBlock}
        if block not in blocks:
            raise ValueError(f"unknown decoder block '{block}'; expected one of {sorted(blocks)}")
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            blocks[block](dim, num_heads, mlp_ratio, qkv_bias, rate, norm_eps) for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.row_len, self.causal, self.pos_every_block = row_len, causal, pos_every_block

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        mask = row_causal_mask(x.shape[1], self.row_len, x.device) if self.causal else None
        if not self.pos_every_block:
            x = x + pos
        for blk in self.blocks:
            x = blk(x + pos if self.pos_every_block else x, mask)
        return self.norm(x)
