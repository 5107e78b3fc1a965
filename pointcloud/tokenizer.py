"""Point-group tokeniser: FPS centres, kNN neighbourhoods, mini-PointNet features, position MLP.

Module and parameter names follow Mamba3D / Point-MAE (``encoder.first_conv``, ``encoder.second_conv``,
``pos_embed``) so official weights map by a prefix (see ``pointcloud.convert``).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from map_core.tokens import Tokens, gather_tokens
from pointcloud.ops import fps, knn


def group_points(xyz: torch.Tensor, num_group: int, group_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """FPS centres and their kNN neighbourhoods relative to the centre.

    xyz: (B, N, 3) -> (neighbourhood (B, G, K, 3), centre (B, G, 3)). FPS starts at point 0; the
    neighbours are sorted nearest first, the centre itself included (at offset 0).
    """
    xyz = xyz[..., :3].contiguous()
    center = gather_tokens(xyz, fps(xyz, num_group))  # (B, G, 3)
    idx = knn(center, xyz, group_size)  # (B, G, K)
    return gather_tokens(xyz, idx) - center.unsqueeze(2), center


class MiniPointNet(nn.Module):
    """Per-group PointNet (Point-MAE ``Encoder``): (B, G, K, 3) -> (B, G, out_dim).

    first_conv: 3 -> w -> 2w; the per-group max is concatenated back to every point (4w);
    second_conv: 4w -> 4w -> out_dim; max over the K points. The official width is w = 128;
    smaller widths make small models (the CPU demo) much cheaper.
    """

    def __init__(self, out_dim: int, width: int = 128):
        super().__init__()
        self.out_dim = out_dim
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, width, 1), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Conv1d(width, 2 * width, 1))
        self.second_conv = nn.Sequential(
            nn.Conv1d(4 * width, 4 * width, 1), nn.BatchNorm1d(4 * width), nn.ReLU(inplace=True),
            nn.Conv1d(4 * width, out_dim, 1))

    @staticmethod
    def _pointwise(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """The official Conv1d(k=1) / BatchNorm1d / ReLU stack on channels-last points x: (P, C_in).

        A 1x1 conv is a Linear with the conv's weight, and BatchNorm1d normalises the channels of an
        (N, C) batch as those of (N, C, K): the same function and parameters, but GEMMs instead of
        cuDNN convolutions (whose weight gradients were the costliest kernels of a PointMAP step).
        """
        for layer in layers:
            if isinstance(layer, nn.Conv1d):
                x = F.linear(x, layer.weight.squeeze(-1), layer.bias)
            else:
                x = layer(x)
        return x

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, k, _ = groups.shape
        feat = self._pointwise(self.first_conv, groups.reshape(b * g * k, 3)).view(b * g, k, -1)  # (BG, K, 2w)
        feat_global = feat.max(dim=1, keepdim=True).values
        feat = torch.cat([feat_global.expand(-1, k, -1), feat], dim=2).view(b * g * k, -1)  # (BGK, 4w)
        feat = self._pointwise(self.second_conv, feat).view(b * g, k, -1).max(dim=1).values
        return feat.reshape(b, g, self.out_dim)


def position_mlp(dim: int, act: type = nn.SiLU) -> nn.Sequential:
    """Centre (…, 3) -> position embedding (…, dim): Linear(3, 128), act, Linear(128, dim).

    The encoder uses SiLU (``pos_embed``), the PointMAP decoder GELU (``decoder_pos_embed``).
    """
    return nn.Sequential(nn.Linear(3, 128), act(), nn.Linear(128, dim))


class PointGroupTokenizer(nn.Module):
    """Point cloud (B, N, 3+) -> Tokens of G groups.

    Tokens.x: (B, G, encoder_dims) mini-PointNet features; Tokens.pos: (B, G, trans_dim) from
    ``pos_embed(centre)``; Tokens.coords: centres (B, G, 3); Tokens.target: neighbourhoods
    relative to their centre (B, G, K, 3).
    """

    def __init__(self, num_group: int, group_size: int, encoder_dims: int, trans_dim: int,
                 pointnet_width: int = 128):
        super().__init__()
        if encoder_dims != trans_dim:
            raise ValueError(f"encoder_dims ({encoder_dims}) must equal trans_dim ({trans_dim}); "
                             "the official models add no projection between them")
        self.num_group, self.group_size = num_group, group_size
        self.encoder = MiniPointNet(encoder_dims, pointnet_width)
        self.pos_embed = position_mlp(trans_dim, nn.SiLU)

    def num_tokens(self, pts: torch.Tensor) -> int:
        """How many tokens ``forward(pts)`` makes: the number of groups."""
        return self.num_group

    @property
    def min_points(self) -> int:
        """The fewest points a cloud may have: one per group centre and per group member."""
        return max(self.num_group, self.group_size)

    def forward(self, pts: torch.Tensor) -> Tokens:
        neighborhood, center = group_points(pts, self.num_group, self.group_size)
        return Tokens(x=self.encoder(neighborhood), pos=self.pos_embed(center), coords=center,
                      target=neighborhood)
