"""PointMAP models: the MAP pretraining model for point clouds and the point-cloud classifier.

``pointmap_pretrain`` is :class:`map_core.pretrain.MAPPretrainer` with the point parts: the
group tokeniser, the PointMAP hybrid encoder, a GELU position MLP for the decoder, a
``Conv1d(trans_dim, 3 * group_size, 1)`` head (official ``increase_dim``) and the Chamfer loss on
the masked groups. The decoder sees [visible ; masked] tokens, rows of sqrt(num_group) tokens.

``pointmap_classifier`` (:class:`PointMAPClassifier`) is the official ``Mamba3D`` classifier of the
PointMAP files.
"""
from __future__ import annotations

import logging
import math
from functools import partial
from typing import List, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from map_core.decoder import ReconstructionDecoder
from map_core.layers import xavier_init
from map_core.losses import chamfer_distance
from map_core.errors import ConfigError
from map_core.objective import Objective
from map_core.pretrain import MAPPretrainer
from map_core.registry import MODELS
from map_core.weights import LoadsPretrained, StateDict, rename_keys
from pointcloud.blocks import PointMAPEncoder, variant_layout
from pointcloud.convert import official_key
from pointcloud.tokenizer import PointGroupTokenizer, position_mlp

log = logging.getLogger(__name__)


def _point_init(m: nn.Module) -> None:
    """Point-MAE ``_init_weights``: trunc-normal(0.02) Linear / Conv1d, zero bias, unit LayerNorm."""
    if isinstance(m, (nn.Linear, nn.Conv1d)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class TokenConvHead(nn.Conv1d):
    """A 1x1 Conv1d applied to tokens: (B, L, C_in) -> (B, L, C_out) (official ``increase_dim``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.squeeze(-1), self.bias)  # the 1x1 conv as the Linear it is


class GroupChamfer(nn.Module):
    """Chamfer loss between predicted and true groups. pred (B, M, 3K), target (B, M, K, 3).

    All B*M groups are compared separately and averaged, as Point-MAE on (B*M, K, 3).
    """

    def __init__(self, loss: str = "cdl2"):
        super().__init__()
        norms = {"cdl2": 2, "cdl1": 1}
        if loss not in norms:
            raise ValueError(f"loss must be 'cdl2' or 'cdl1', got {loss!r}")
        self.loss, self.norm = loss, norms[loss]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = target.shape[-2]
        return chamfer_distance(pred.reshape(-1, k, 3), target.reshape(-1, k, 3), norm=self.norm)


def row_length(num_group: int) -> int:
    """sqrt(num_group): PointMAP decodes rows of sqrt(G) groups, so G must be a perfect square."""
    row = math.isqrt(num_group)
    if row * row != num_group:
        raise ValueError(f"PointMAP needs num_group to be a perfect square (rows of sqrt(G) groups); "
                         f"got num_group={num_group} (nearest: {row * row} or {(row + 1) ** 2})")
    return row


class PointMAP(LoadsPretrained, MAPPretrainer):
    """MAP pretraining on point clouds. forward(pts (B, N, 3), mask=None) -> (loss, pred, mask);
    forward_features(pts) -> (B, 2C) for the linear SVM (Point-MAE ``runner_pretrain`` ``validate``).

    pred: (B, G, 3K) per group in group order (only masked groups are trained); mask: bool (B, G).
    """

    def adapt_pretrained(self, state_dict: StateDict, source: str) -> Tuple[StateDict, List[str]]:
        """Ours or official ``Point_MAE`` names; the official encoder's unused cls token is dropped."""
        return rename_keys(state_dict, official_key, source)


@MODELS.register("pointmap_pretrain")
def pointmap_pretrain(trans_dim: int = 384, depth: int = 12, num_heads: int = 6, group_size: int = 32,
                      num_group: int = 64, encoder_dims: int = 384, center_local_k: int = 4,
                      mask_ratio: float = 0.6, drop_path: float = 0.1, decoder_depth: int = 4,
                      decoder_num_heads: int = 6, decoder_drop_path: float = 0.1, loss: str = "cdl2",
                      pointnet_width: int = 128, objective: str = "map",
                      variant: str = "hybrid") -> PointMAP:
    """PointMAP pretraining model (official ``Point_MAE`` of the PointMAP files, rand mask).

    ``objective``: ``map`` (the paper: fixed ``mask_ratio``, row-causal decoder over rows of
    sqrt(num_group) tokens), ``mae`` or ``ar`` (:mod:`map_core.objective`; ``ar`` needs
    ``center_local_k`` <= sqrt(num_group)). ``variant``: ``hybrid``, ``mamba`` or ``transformer``
    encoder at about the hybrid's parameter count (:func:`pointcloud.blocks.variant_layout`).
    Has no ``cls_token`` / ``cls_pos``: the official pretraining encoder creates them but never
    uses them (2 * trans_dim parameters fewer than the official count). ``pointnet_width`` is the
    group encoder's first width (official 128).
    """
    rows = row_length(num_group)
    if objective == "ar" and center_local_k > rows:
        raise ConfigError(f"model.center_local_k={center_local_k}: objective 'ar' takes each group's "
                          f"neighbours from its own and earlier rows, and the first row has only "
                          f"sqrt(num_group)={rows} groups")
    tokenizer = PointGroupTokenizer(num_group, group_size, encoder_dims, trans_dim, pointnet_width)
    encoder = PointMAPEncoder(trans_dim, depth, center_local_k, drop_path, num_heads,
                              variant_layout(variant, depth, trans_dim, center_local_k, num_heads))
    encoder.apply(_point_init)  # the tokeniser keeps its modules' own init, as in the classifier
    decoder = ReconstructionDecoder(trans_dim, decoder_depth, decoder_num_heads, qkv_bias=False,
                        drop_path=decoder_drop_path, pos_every_block=True)
    decoder.apply(xavier_init)
    model = PointMAP(tokenizer, encoder, decoder, position_mlp(trans_dim, nn.GELU),
                     TokenConvHead(trans_dim, 3 * group_size), GroupChamfer(loss), trans_dim, trans_dim,
                     objective=Objective(objective, num_group, rows, mask_ratio, mask_rounding="floor"),
                     decoder_order="visible_first", latent_proj=False)
    trunc_normal_(model.mask_token, std=0.02)
    return model


class PointMAPClassifier(LoadsPretrained, nn.Module):
    """Official ``Mamba3D`` classifier (registered as ``pointmap_classifier``; ``variant`` as in
    :func:`pointmap_pretrain`). forward(pts (B, N, 3)) -> logits (B, num_classes) (the official
    ``cls_dim``).

    Feature = [x_cls, max(x_tokens) + mean(x_tokens)] (B, 2C) after the encoder's norm. The mean is
    per sample; ``official_mean_bug=True`` adds the FIRST sample's mean to every sample, as the
    official line ``x[:, 1:].mean(1)[0]`` does (evaluate official finetuned checkpoints with it).
    """

    def __init__(self, trans_dim: int = 384, depth: int = 12, num_heads: int = 6, group_size: int = 32,
                 num_group: int = 128, encoder_dims: int = 384, center_local_k: int = 4, num_classes: int = 40,
                 drop_path: float = 0.1, official_mean_bug: bool = False,
                 pointnet_width: int = 128, variant: str = "hybrid"):
        super().__init__()
        self.official_mean_bug = official_mean_bug
        self.tokenizer = PointGroupTokenizer(num_group, group_size, encoder_dims, trans_dim, pointnet_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.encoder = PointMAPEncoder(trans_dim, depth, center_local_k, drop_path, num_heads,
                                       variant_layout(variant, depth, trans_dim, center_local_k, num_heads))
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(2 * trans_dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, num_classes))
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.cls_pos, std=0.02)

    def forward_features(self, pts: torch.Tensor) -> torch.Tensor:
        """pts (B, N, 3) -> pooled feature (B, 2C) (the input of the head; also used by the SVM)."""
        tok = self.tokenizer(pts)
        b = tok.x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tok.x], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), tok.pos], dim=1)
        x = self.encoder(x, pos, tok.coords)  # (B, G + 1, C)
        tokens = x[:, 1:]
        mean = tokens.mean(1)
        if self.official_mean_bug:
            mean = mean[:1].expand_as(mean)
        return torch.cat([x[:, 0], tokens.max(1).values + mean], dim=-1)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.cls_head_finetune(self.forward_features(pts))

    def no_weight_decay(self) -> Set[str]:
        return {"cls_token", "cls_pos"}

    def adapt_pretrained(self, state_dict: StateDict, source: str) -> Tuple[StateDict, List[str]]:
        """Ours or official names (:mod:`pointcloud.convert`); the pretraining encoder's unused
        ``cls_token`` / ``cls_pos`` are kept, as the official finetune loads them."""
        return rename_keys(state_dict, partial(official_key, keep_unused_cls=True), source)


MODELS.register("pointmap_classifier", fn=PointMAPClassifier)
