"""PointMAP part segmentation: the PointMAP encoder with Point-MAE's segmentation head.

``pointmap_partseg``: forward(pts (B, N, 3), category (B,)) -> per-point part logits (B, N, num_parts).
Sizes follow Point-MAE ``segmentation/models/pt.py`` (2048 points, 128 groups of 32, C = 384); with
L tapped layers and F = L * C (3 x 384 = 1152 by default):

1. tokens: the PointMAP tokeniser and hybrid encoder (no cls token), tapped after Mamba3D blocks
   ``fetch_layers`` (default: the last of each third of the depth, 3 / 7 / 11 of 12 as Point-MAE's
   ``fetch_idx``; a tap after block 11 includes the Trans3D block that follows it), each through
   the encoder's final LayerNorm, concatenated: (B, G, F);
2. shape feature: max and mean of the tokens over the groups (2F = 2304) and ``label_conv`` of the
   one-hot category, Conv1d(num_categories, 64, no bias), BatchNorm, LeakyReLU(0.2): 2F + 64 = 2368;
3. ``propagation_0``: each point gets the features of its 3 nearest group centres, weighted by
   inverse squared distance (``three_nn_interpolate``), after its own xyz (3 + F = 1155 channels),
   then Conv1d 1155 -> 1536 (4C) -> 1024, each with BatchNorm and ReLU;
4. per point [propagated (1024), shape feature (2368)] = 3392 -> ``convs1`` 512, ``bns1``, ReLU,
   Dropout(0.5) -> ``convs2`` 256, ``bns2``, ReLU -> ``convs3`` num_parts (logits; Point-MAE returns
   their log-softmax, the same argmax and, with NLL, the same loss).

Encoder and tokeniser names are ours (as in the classifier); head names are Point-MAE's.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from map_core.tokens import gather_tokens
from map_core.registry import MODELS
from map_core.weights import LoadsPretrained, StateDict, rename_keys
from pointcloud.blocks import PointMAPEncoder
from pointcloud.convert import official_key
from pointcloud.ops import knn
from pointcloud.tokenizer import PointGroupTokenizer


def three_nn_interpolate(xyz: torch.Tensor, centers: torch.Tensor, features: torch.Tensor, k: int = 3,
                         eps: float = 1e-8) -> torch.Tensor:
    """Features of the ``k`` nearest centres, weighted by inverse squared distance (PointNet++).

    xyz: (B, N, 3), centers: (B, G, 3), features: (B, G, C) -> (B, N, C) with
    out[b, n] = sum_j w_j features[b, j] over the k nearest centres j of point n, where
    w_j = (1 / (d_j^2 + eps)) / sum_i (1 / (d_i^2 + eps)) and d_j^2 the squared distance. The
    weights form a sparse (B, N, G) matrix, applied with one batched matmul.
    """
    idx = knn(xyz, centers, k)  # (B, N, k)
    d2 = ((xyz.unsqueeze(2) - gather_tokens(centers, idx)) ** 2).sum(-1)  # (B, N, k)
    inv = 1.0 / (d2 + eps)
    weights = torch.zeros(*xyz.shape[:2], centers.shape[1], dtype=features.dtype, device=features.device)
    weights = weights.scatter(2, idx, (inv / inv.sum(-1, keepdim=True)).to(features.dtype))
    return weights @ features


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation (Point-MAE ``PointNetFeaturePropagation``).

    forward(xyz (B, N, 3), centers (B, G, 3), features (B, G, C)) -> (B, widths[-1], N): per point
    [xyz, interpolated centre features] (3 + C = ``in_channels``), then Conv1d + BatchNorm + ReLU
    for each width.
    """

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        channels = [in_channels, *widths]
        self.mlp_convs = nn.ModuleList(nn.Conv1d(a, b, 1) for a, b in zip(channels, channels[1:]))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm1d(w) for w in widths)

    def forward(self, xyz: torch.Tensor, centers: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        x = torch.cat([xyz, three_nn_interpolate(xyz, centers, features)], dim=-1).transpose(1, 2)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return x


def default_fetch_layers(depth: int) -> List[int]:
    """The last Mamba3D block of each third of the encoder: depth 12 -> [3, 7, 11] (Point-MAE)."""
    if depth < 3:
        raise ValueError(f"pointmap_partseg: depth {depth} < 3 has no three thirds to tap; set fetch_layers")
    return [depth // 3 - 1, 2 * depth // 3 - 1, depth - 1]


class PointMAPPartSeg(LoadsPretrained, nn.Module):
    """PointMAP encoder + Point-MAE segmentation head (see the module docstring for every width),
    registered as ``pointmap_partseg``; defaults: ShapeNetPart, 128 groups of 32.

    forward(pts (B, N, 3+), category (B,) int64 in [0, num_categories)) -> logits (B, N, num_parts).
    """

    def __init__(self, num_parts: int = 50, num_categories: int = 16, trans_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, group_size: int = 32, num_group: int = 128, encoder_dims: int = 384,
                 center_local_k: int = 4, drop_path: float = 0.1, fetch_layers: Optional[Sequence[int]] = None,
                 pointnet_width: int = 128):
        super().__init__()
        self.num_parts, self.num_categories = num_parts, num_categories
        self.fetch_layers = list(fetch_layers) if fetch_layers is not None else default_fetch_layers(depth)
        if not self.fetch_layers or not all(0 <= n < depth for n in self.fetch_layers):
            raise ValueError(f"pointmap_partseg: fetch_layers must name Mamba3D blocks 0..{depth - 1}, "
                             f"got {self.fetch_layers}")
        self.tokenizer = PointGroupTokenizer(num_group, group_size, encoder_dims, trans_dim,
                                             pointnet_width=pointnet_width)
        self.encoder = PointMAPEncoder(trans_dim, depth, center_local_k, drop_path, num_heads)
        feat = len(self.fetch_layers) * trans_dim
        self.label_conv = nn.Sequential(nn.Conv1d(num_categories, 64, 1, bias=False), nn.BatchNorm1d(64),
                                        nn.LeakyReLU(0.2))
        self.propagation_0 = FeaturePropagation(feat + 3, [4 * trans_dim, 1024])
        self.convs1 = nn.Conv1d(1024 + 2 * feat + 64, 512, 1)
        self.bns1 = nn.BatchNorm1d(512)
        self.dp1 = nn.Dropout(0.5)
        self.convs2 = nn.Conv1d(512, 256, 1)
        self.bns2 = nn.BatchNorm1d(256)
        self.convs3 = nn.Conv1d(256, num_parts, 1)
        self.relu = nn.ReLU()

    def forward(self, pts: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        xyz = pts[..., :3].contiguous()
        tok = self.tokenizer(xyz)
        layers = self.encoder(tok.x, tok.pos, tok.coords, return_layers=self.fetch_layers)
        tokens = torch.cat(layers, dim=-1)  # (B, G, F)
        one_hot = F.one_hot(category, self.num_categories).to(tokens.dtype).unsqueeze(-1)  # (B, K, 1)
        shape = torch.cat([tokens.max(1).values, tokens.mean(1), self.label_conv(one_hot).squeeze(-1)], dim=-1)
        points = self.propagation_0(xyz, tok.coords, tokens)  # (B, 1024, N)
        x = torch.cat([points, shape.unsqueeze(-1).expand(-1, -1, xyz.shape[1])], dim=1)
        x = self.dp1(self.relu(self.bns1(self.convs1(x))))
        x = self.relu(self.bns2(self.convs2(x)))
        return self.convs3(x).transpose(1, 2)

    def adapt_pretrained(self, state_dict: StateDict, source: str) -> Tuple[StateDict, List[str]]:
        """PointMAP pretraining weights (ours or official) or finetuned ones -> our names, as the
        classifier's but without the unused pretraining cls token."""
        return rename_keys(state_dict, official_key, source)


MODELS.register("pointmap_partseg", fn=PointMAPPartSeg)
