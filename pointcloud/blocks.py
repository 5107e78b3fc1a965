"""Mamba3D encoder layers: local norm and pool (LNP), the Mamba3D and Trans3D blocks, the PointMAP encoder.

One encoder layer (Mamba3D, ``models/Mamba3D.py``)::

    x = x + drop_path(lfa(centre, norm1(x)))      # LNP: local geometry among the group centres
    x = x + drop_path(mixer(norm2(x)))            # MambaMixer (channel-flip "v4") or a Transformer block

Finetuning prepends a cls token: token 0 is not pooled by LNP, it passes through as the
normalised input, so its update is ``x_cls + drop_path(norm1(x)_cls)`` (as the official code).
Names follow the official release (``lfa.lga.affine_alpha_feat``, ``lfa.pre_norm_ft``,
``lfa.mlp.share_mlp``, ``blocks.blocks.{i}``, ``blocks.blocks_vit.{j}``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from map_core.compile import repeated_block
from map_core.encoder import layout_steps, matched_layout, official_layout, parse_layout
from map_core.layers import TransformerBlock, make_drop_path
from map_core.tokens import gather_tokens
from map_core.mixers import MambaMixer
from map_core.objective import RowCausal
from pointcloud.ops import knn


class LocalNorm(nn.Module):
    """Neighbour features normalised by one global std, concatenated with the centre feature.

    centre: (B, G, 3), x: (B, G, C) -> (B, G, k, 2C): ``[(x_j - x_i) / (std + 1e-5), x_i]`` over
    the k nearest centres j of each centre i (i itself included), then the affine
    ``alpha * . + beta``. ``std`` is the unbiased std of the whole (B, G, k, C) difference tensor,
    one scalar for the batch (official K_Norm). With ``causal`` (``ar``) the neighbours come from
    rows <= the centre's row and row r's std from rows <= r (:class:`map_core.objective.RowCausal`).
    """

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.k = k
        self.affine_alpha_feat = nn.Parameter(torch.ones(1, 1, 1, 2 * dim))
        self.affine_beta_feat = nn.Parameter(torch.zeros(1, 1, 1, 2 * dim))

    def forward(self, center: torch.Tensor, x: torch.Tensor, causal: Optional[RowCausal] = None) -> torch.Tensor:
        idx = knn(center, center, self.k) if causal is None else causal.nearest(center, self.k)  # (B, G, k)
        diff = gather_tokens(x, idx) - x.unsqueeze(2)  # (B, G, k, C)
        diff = diff / ((diff.std() if causal is None else causal.cumulative_std(diff)) + 1e-5)
        feat = torch.cat([diff, x.unsqueeze(2).expand_as(diff)], dim=-1)
        return self.affine_alpha_feat * feat + self.affine_beta_feat


class LocalNormPool(nn.Module):
    """LNP (the official ``lfa``): local norm, softmax-weighted pool, LayerNorm, Linear, SiLU.

    forward(center (B, G, 3), x (B, L, C)) -> (B, L, C) with L = G (no cls token) or L = G + 1
    (token 0 is a cls token, returned unchanged). The pool over the k neighbours is
    ``sum(f e^f) / sum(e^f)`` per channel, evaluated as ``sum(softmax(f) * f)``.
    """

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.lga = LocalNorm(dim, k)
        self.pre_norm_ft = nn.LayerNorm(2 * dim)
        self.mlp = nn.ModuleDict({"share_mlp": nn.Conv1d(2 * dim, dim, 1)})
        self.act = nn.SiLU()

    def forward(self, center: torch.Tensor, x: torch.Tensor, causal: Optional[RowCausal] = None) -> torch.Tensor:
        g, length = center.shape[1], x.shape[1]
        if length not in (g, g + 1):
            raise ValueError(f"LNP: {length} tokens for {g} centres; expected {g} (no cls) or {g + 1} (cls first)")
        cls = x[:, :1] if length == g + 1 else None
        tokens = x[:, 1:] if cls is not None else x
        feat = self.lga(center, tokens, causal)  # (B, G, k, 2C)
        pooled = (torch.softmax(feat, dim=2) * feat).sum(dim=2)  # (B, G, 2C)
        share = self.mlp["share_mlp"]
        out = self.act(F.linear(self.pre_norm_ft(pooled), share.weight.squeeze(-1), share.bias))
        return out if cls is None else torch.cat([cls, out], dim=1)


@repeated_block
class Mamba3DBlock(nn.Module):
    """LNP + a token mixer, each pre-normed with an outer residual. x: (B, L, C), center: (B, G, 3).

    ``mixer`` is a layout letter (:func:`map_core.encoder.parse_layout`): ``"M"``: MambaMixer with the
    channel-flip second direction (bimamba v4); ``"T"``: a Transformer block (the Trans3D block; it
    has its own residuals).
    """

    def __init__(self, dim: int, center_local_k: int = 4, drop_path: float = 0.0, mixer: str = "M",
                 num_heads: int = 6, in_schedule: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.lfa = LocalNormPool(dim, center_local_k)
        self.norm2 = nn.LayerNorm(dim)
        if mixer == "M":
            self.mixer = MambaMixer(dim, bidirectional="channel")
        elif mixer == "T":
            self.mixer = TransformerBlock(dim, num_heads, mlp_ratio=4.0, qkv_bias=False, drop_path=0.0)
        else:
            raise ValueError(f"mixer must be a layout letter, 'M' (Mamba) or 'T' (Transformer), got {mixer!r}")
        self.drop_path = make_drop_path(drop_path, in_schedule)

    def forward(self, x: torch.Tensor, center: torch.Tensor, causal: Optional[RowCausal] = None) -> torch.Tensor:
        """``causal`` (``ar``): the output at row r depends on rows <= r only (LNP neighbours and std
        from rows <= r, its attention mask; the channel-flip Mamba scans forward already)."""
        x = x + self.drop_path(self.lfa(center, self.norm1(x), causal))
        if isinstance(self.mixer, TransformerBlock):
            mixed = self.mixer(self.norm2(x), None if causal is None else causal.attn_mask(x.shape[1], x.device))
        else:
            mixed = self.mixer(self.norm2(x), causal=causal is not None)
        return x + self.drop_path(mixed)


class Trans3DBlock(Mamba3DBlock):
    """The Trans3D block: a Mamba3D block whose mixer is a Transformer block (qkv_bias False, mlp 4)."""

    def __init__(self, dim: int, center_local_k: int = 4, drop_path: float = 0.0, num_heads: int = 6,
                 in_schedule: bool = False):
        super().__init__(dim, center_local_k, drop_path, "T", num_heads, in_schedule)


class PointMAPBlocks(nn.Module):
    """``blocks.{i}`` Mamba3D blocks and ``blocks_vit.{j}`` Trans3D blocks (official ``Mamba3DEncoder``),
    run in ``layout`` order (``M`` a Mamba3D block, ``T`` a Trans3D block; see
    :func:`map_core.encoder.parse_layout`).

    Default layout ``official_layout(depth)``: after Mamba3D block n with (n + 1) % 3 == 0, Trans3D
    block n // 3 runs. ``pos`` is added at every block input. Drop path: Mamba3D block i gets
    dpr[i], Trans3D block j gets dpr[j] (official quirk), with dpr = linspace(0, drop_path, n) and
    n the larger of the two block counts (``depth`` for the official layout).
    """

    def __init__(self, dim: int, depth: int, center_local_k: int = 4, drop_path: float = 0.0,
                 num_heads: int = 6, layout: Optional[str] = None):
        super().__init__()
        self.layout = parse_layout(layout or official_layout(depth))
        n_mamba, n_trans = self.layout.count("M"), self.layout.count("T")
        dpr = torch.linspace(0, drop_path, max(n_mamba, n_trans), device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Mamba3DBlock(dim, center_local_k, dpr[i], "M", num_heads, drop_path > 0) for i in range(n_mamba))
        self.blocks_vit = nn.ModuleList(
            Trans3DBlock(dim, center_local_k, dpr[j], num_heads, drop_path > 0) for j in range(n_trans))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, center: torch.Tensor, causal: Optional[RowCausal] = None,
                return_layers: Optional[Sequence[int]] = None) -> Union[torch.Tensor, List[torch.Tensor]]:
        """x, pos: (B, L, C), center: (B, G, 3) -> the last layer's output (B, L, C).

        With ``return_layers`` (indices of Mamba3D blocks, 0-based): a list of (B, L, C) hidden
        states instead, the output of each named block after the Trans3D blocks that follow it
        (if any), in the order given; layers past the deepest one named are not run.
        """
        if return_layers is not None:
            bad = [n for n in return_layers if not 0 <= n < len(self.blocks)]
            if bad or not return_layers:
                raise ValueError(f"return_layers must name Mamba3D blocks 0..{len(self.blocks) - 1}, "
                                 f"got {list(return_layers)}")
        deepest = None if return_layers is None else max(return_layers)
        taps, m = {}, -1
        for kind, i in layout_steps(self.layout):
            if kind == "M":
                if deepest is not None and i > deepest:  # the deepest tap and the Trans3D blocks after it are done
                    break
                m = i
            x = (self.blocks if kind == "M" else self.blocks_vit)[i](x + pos, center, causal)
            taps[m] = x
        return x if return_layers is None else [taps[n] for n in return_layers]


class PointMAPEncoder(nn.Module):
    """The PointMAP encoder (hybrid by default) + final LayerNorm; the ``encoder`` of ``MAPPretrainer``.

    forward(x (B, L, C), pos (B, L, C), coords = centres (B, G, 3), causal=None) -> (B, L, C),
    L = G or G + 1 (cls token first). ``causal`` (``ar``, no cls token): the output at row r depends
    on input rows <= r only. ``return_layers`` (Mamba3D block indices) gives
    the list of those blocks' outputs instead, each through the final LayerNorm (as Point-MAE's
    segmentation model taps its encoder).
    """

    def __init__(self, dim: int = 384, depth: int = 12, center_local_k: int = 4, drop_path: float = 0.0,
                 num_heads: int = 6, layout: Optional[str] = None):
        super().__init__()
        self.blocks = PointMAPBlocks(dim, depth, center_local_k, drop_path, num_heads, layout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, coords: torch.Tensor, causal: Optional[RowCausal] = None,
                return_layers: Optional[Sequence[int]] = None) -> Union[torch.Tensor, List[torch.Tensor]]:
        if return_layers is None:
            return self.norm(self.blocks(x, pos, coords, causal))
        return [self.norm(h) for h in self.blocks(x, pos, coords, causal, return_layers)]


def variant_layout(variant: str, depth: int, dim: int, center_local_k: int = 4, num_heads: int = 6) -> str:
    """Block layout per ``variant`` at the parameter count of the hybrid of ``depth`` Mamba3D blocks.

    hybrid: ``official_layout(depth)``; mamba: Mamba3D blocks only; transformer: Trans3D blocks only
    (both keep the LNP of every block; see :func:`map_core.encoder.matched_layout`, counts measured
    at ``dim``). Encoder parameters (final norm included):

    | size | hybrid | mamba | transformer |
    | --- | --- | --- | --- |
    | demo (d 96, depth 3) | 3 M + 1 T: 433,536 | 4 M: 403,008 | 3 T: 393,888 |
    | official (d 384, depth 12) | 12 M + 4 T: 24,407,808 | 18 M: 24,172,032 | 12 T: 24,879,360 |
    """
    with torch.device("meta"):
        mamba = sum(p.numel() for p in Mamba3DBlock(dim, center_local_k).parameters())
        block = sum(p.numel() for p in Trans3DBlock(dim, center_local_k, num_heads=num_heads).parameters())
    return matched_layout(variant, depth, mamba, block)
