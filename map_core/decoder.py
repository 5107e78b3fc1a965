"""The decoder of MAP: a stack of Transformer blocks whose attention mask the objective chooses.

For ``map`` (and ``ar``) tokens are grouped into rows of consecutive tokens (one image row of
patches; sqrt(G) point groups) and a token of row r attends to every token of rows 0..r
(:func:`map_core.objective.row_causal_mask`); for ``mae`` every token sees every token. See
:mod:`map_core.objective`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .layers import DualNormBlock, TransformerBlock


class ReconstructionDecoder(nn.Module):
    """A stack of Transformer blocks + final LayerNorm that rebuilds the tokens the loss covers,
    for every objective: row-causal attention for ``map`` / ``ar``, full attention for ``mae``.

    forward(x, pos: (B, L, C), attn_mask: bool (L, L) or None) -> (B, L, C). ``pos_every_block``
    adds ``pos`` before every block (Point-MAE style) instead of once at the input (MAE / MAP 2D
    style). ``block`` is ``"vit"`` (timm names: ``blocks.{k}.attn.qkv``) or ``"dual_norm"`` (MAP 2D
    names: ``blocks.{k}.attn2.q``/``kv`` with ``norm2_1``/``norm2_2``).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        pos_every_block: bool = False,
        block: str = "vit",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        blocks = {"vit": TransformerBlock, "dual_norm": DualNormBlock}
        if block not in blocks:
            raise ValueError(f"unknown decoder block '{block}'; expected one of {sorted(blocks)}")
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            blocks[block](dim, num_heads, mlp_ratio, qkv_bias, rate, norm_eps) for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pos_every_block = pos_every_block

    def forward(self, x: torch.Tensor, pos: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.pos_every_block:
            x = x + pos
        for blk in self.blocks:
            x = blk(x + pos if self.pos_every_block else x, attn_mask)
        return self.norm(x)
