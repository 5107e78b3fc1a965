"""Reference of the official 3D models: Mamba3D blocks and the MAP authors' PointMAP hybrid.

Sources: `PointMAP/Mamba3D.py` and `PointMAP/point_transformer.py` of the MAP release, and Mamba3D's
`models/bimamba_ssm/modules/mamba_simple.py` (bimamba v4). Same module tree, parameter names and
order of operations, in plain PyTorch: brute-force FPS / kNN / Chamfer instead of the CUDA
extensions, a loop selective scan instead of mamba_ssm.

Official facts this file relies on (read from the release):
- FPS is `pointnet2_ops.furthest_point_sample`: starts at index 0, and points whose squared norm is
  <= 1e-3 are never candidates after the start (the upstream kernel skips them; some forks use 1e-8
  or drop the test, hence the `skip_sq_norm` argument).
- LNP (`lfa`) receives `norm1(x)`; in finetuning the cls token it passes through is that normalised
  token, so the block's cls update is x_cls + norm1(x)_cls (drop path aside).
- K_Pool is mean(x * e^x) / mean(e^x) over the neighbours; computed here as the softmax-weighted
  sum (same value, no overflow).
- v4 mixer: out_proj(y + flip_channel(y_b)), y_b computed on in_proj(x) flipped along the channel
  axis (2*d_inner); no halving.
- Trans3D blocks use point_transformer's `Block` hard-wired to 6 heads, mlp_ratio 4, qkv_bias False;
  Trans3D block j gets drop path dpr[j] (not the rate of the Mamba block it follows).
- MaskMamba (the pretraining encoder) creates cls_token / cls_pos although it never uses them.
"""
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

from . import mamba_inner_no_out_proj


# ---------------------------------------------------------------- brute-force geometry ops
def fps(xyz: torch.Tensor, number: int, skip_sq_norm: float = 1e-3) -> torch.Tensor:
    """Farthest point sampling as pointnet2_ops: xyz (B, N, 3) -> centres (B, number, 3).

    Starts at index 0. Like the upstream kernel, points with squared norm <= skip_sq_norm (1e-3, i.e.
    within ~0.0316 of the origin) are never selected after the start; pass 0.0 for plain FPS.
    """
    B, N, _ = xyz.shape
    idx = torch.zeros(B, number, dtype=torch.long, device=xyz.device)
    for b in range(B):
        pts = xyz[b].float()
        candidate = (pts * pts).sum(-1) > skip_sq_norm
        temp = torch.full((N,), 1e10, dtype=torch.float32, device=xyz.device)
        old = 0
        for j in range(1, number):
            d = ((pts - pts[old]) ** 2).sum(-1)
            temp = torch.where(candidate, torch.minimum(d, temp), temp)
            scores = torch.where(candidate, temp, torch.full_like(temp, -1.0))
            old = int(torch.argmax(scores))
            idx[b, j] = old
    return torch.gather(xyz, 1, idx[..., None].expand(-1, -1, 3))


def knn_idx(ref: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, M, k) of the k nearest `ref` points (B, N, 3) to each `query` point, nearest first."""
    dist = ((query[:, :, None, :] - ref[:, None, :, :]) ** 2).sum(-1)  # (B, M, N)
    return torch.sort(dist, dim=-1, stable=True).indices[..., :k]


def chamfer_sq_dists(xyz1: torch.Tensor, xyz2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Squared nearest-neighbour distances: (B, N) from xyz1 to xyz2, (B, M) from xyz2 to xyz1."""
    d = ((xyz1[:, :, None, :] - xyz2[:, None, :, :]) ** 2).sum(-1)
    return d.min(dim=2).values, d.min(dim=1).values


class ChamferDistanceL2(nn.Module):
    def forward(self, xyz1: torch.Tensor, xyz2: torch.Tensor) -> torch.Tensor:
        dist1, dist2 = chamfer_sq_dists(xyz1, xyz2)
        return torch.mean(dist1) + torch.mean(dist2)


class ChamferDistanceL1(nn.Module):
    def forward(self, xyz1: torch.Tensor, xyz2: torch.Tensor) -> torch.Tensor:
        dist1, dist2 = chamfer_sq_dists(xyz1, xyz2)
        return (torch.mean(torch.sqrt(dist1)) + torch.mean(torch.sqrt(dist2))) / 2


# ---------------------------------------------------------------- tokenizer
class Encoder(nn.Module):
    """Mini-PointNet per group: (B, G, N, 3) -> (B, G, encoder_channel)."""

    def __init__(self, encoder_channel: int):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Conv1d(512, encoder_channel, 1))

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        bs, g, n, _ = point_groups.shape
        feature = self.first_conv(point_groups.reshape(bs * g, n, 3).transpose(2, 1))  # (BG, 256, n)
        feature_global = torch.max(feature, dim=2, keepdim=True)[0]
        feature = torch.cat([feature_global.expand(-1, -1, n), feature], dim=1)  # (BG, 512, n)
        feature = self.second_conv(feature)
        return torch.max(feature, dim=2)[0].reshape(bs, g, self.encoder_channel)


class Group(nn.Module):
    """FPS + kNN: xyz (B, N, 3) -> neighbourhood (B, G, M, 3) relative to centre, centre (B, G, 3)."""

    def __init__(self, num_group: int, group_size: int):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch_size, num_points, _ = xyz.shape
        center = fps(xyz, self.num_group)
        idx = knn_idx(xyz, center, self.group_size)  # (B, G, M)
        idx = (idx + torch.arange(batch_size, device=xyz.device).view(-1, 1, 1) * num_points).view(-1)
        neighborhood = xyz.reshape(batch_size * num_points, -1)[idx, :]
        neighborhood = neighborhood.view(batch_size, self.num_group, self.group_size, 3)
        return neighborhood - center.unsqueeze(2), center


# ---------------------------------------------------------------- LNP (local norm and pool)
class GroupFeature(nn.Module):
    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor, feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """xyz (B, N, 3), feat (B, N, C) -> knn offsets (B, N, K, 3), knn features (B, N, K, C)."""
        batch_size, num_points, _ = xyz.shape
        C = feat.shape[-1]
        idx = knn_idx(xyz, xyz, self.group_size)
        idx = (idx + torch.arange(batch_size, device=xyz.device).view(-1, 1, 1) * num_points).view(-1)
        neighborhood = xyz.reshape(batch_size * num_points, -1)[idx, :]
        neighborhood = neighborhood.view(batch_size, num_points, self.group_size, 3)
        neighborhood_feat = feat.contiguous().view(-1, C)[idx, :]
        neighborhood_feat = neighborhood_feat.view(batch_size, num_points, self.group_size, C)
        return neighborhood - xyz.unsqueeze(2), neighborhood_feat


class K_Norm(nn.Module):
    def __init__(self, out_dim: int, k_group_size: int):
        super().__init__()
        self.group_feat = GroupFeature(k_group_size)
        self.affine_alpha_feat = nn.Parameter(torch.ones([1, 1, 1, out_dim]))
        self.affine_beta_feat = nn.Parameter(torch.zeros([1, 1, 1, out_dim]))

    def forward(self, lc_xyz: torch.Tensor, lc_x: torch.Tensor) -> torch.Tensor:
        """lc_xyz (B, G, 3), lc_x (B, G, C) -> (B, 2C, G, K)."""
        _, knn_x = self.group_feat(lc_xyz, lc_x)
        mean_x = lc_x.unsqueeze(dim=-2)
        std_x = torch.std(knn_x - mean_x)  # one scalar over the whole tensor (unbiased)
        knn_x = (knn_x - mean_x) / (std_x + 1e-5)
        B, G, K, C = knn_x.shape
        knn_x = torch.cat([knn_x, lc_x.reshape(B, G, 1, -1).repeat(1, 1, K, 1)], dim=-1)
        knn_x = self.affine_alpha_feat * knn_x + self.affine_beta_feat
        return knn_x.permute(0, 3, 1, 2)


class K_Pool(nn.Module):
    def forward(self, knn_x_w: torch.Tensor) -> torch.Tensor:
        """(B, 2C, G, K) -> (B, 2C, G): mean(x e^x) / mean(e^x) over K, evaluated stably."""
        return (torch.softmax(knn_x_w, dim=-1) * knn_x_w).sum(-1)


class Post_ShareMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.share_mlp = nn.Conv1d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.share_mlp(x).permute(0, 2, 1)


class LNPBlock(nn.Module):
    def __init__(self, lga_out_dim: int, k_group_size: int, mlp_in_dim: int, mlp_out_dim: int,
                 act_layer=nn.SiLU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.lga_out_dim = lga_out_dim
        self.lga = K_Norm(lga_out_dim, k_group_size)
        self.kpool = K_Pool()
        self.mlp = Post_ShareMLP(mlp_in_dim, mlp_out_dim)
        self.pre_norm_ft = norm_layer(lga_out_dim)
        self.act = act_layer()

    def forward(self, center: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """center (B, G, 3); feat (B, G+1, C) with a cls token first, or (B, G, C) in pretraining."""
        B, _, C = feat.shape
        cls_token = feat[:, 0, :].view(B, 1, C)
        pretrain_flag = False
        feat = feat[:, 1:, :]
        if center.shape[1] != feat.shape[1]:
            feat = torch.cat((cls_token, feat), dim=1)
            pretrain_flag = True
        lc_x_w = self.kpool(self.lga(center, feat))  # (B, 2C, G)
        lc_x_w = self.pre_norm_ft(lc_x_w.permute(0, 2, 1))
        lc_x = self.act(self.mlp(lc_x_w.permute(0, 2, 1)))  # (B, G, C)
        if not pretrain_flag:
            lc_x = torch.cat((cls_token, lc_x), dim=1)
        return lc_x


# ---------------------------------------------------------------- mixers
class Mamba(nn.Module):
    """Mamba3D's bimamba mixer, `bimamba_type="v4"` fast-path semantics."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, bimamba_type: str = "v4"):
        super().__init__()
        if bimamba_type != "v4":
            raise ValueError(f"reference implements bimamba_type 'v4' only, got {bimamba_type!r}")
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.bimamba_type = bimamba_type
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1))
        self.A_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_b_log = nn.Parameter(a_log.clone())
        self.conv1d_b = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                  padding=d_conv - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False)
        self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.D_b = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        seqlen = hidden_states.shape[1]
        xz = self.in_proj.weight @ hidden_states.reshape(-1, self.d_model).t()  # (2*d_inner, B*L)
        xz = xz.reshape(xz.shape[0], -1, seqlen).transpose(0, 1)  # (B, 2*d_inner, L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        out = mamba_inner_no_out_proj(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        out_b = mamba_inner_no_out_proj(xz.flip([-2]), self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                                        self.A_b_log, self.D_b)
        return F.linear((out + out_b.flip([-2])).transpose(1, 2), self.out_proj.weight, self.out_proj.bias)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:
            attn = attn + mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """point_transformer.Block: pre-norm attention + MLP, each with its own residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------- encoder blocks
class Mamba3DBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0, k_group_size: int = 8, bimamba_type: str = "v4"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.k_group_size = k_group_size
        self.lfa = LNPBlock(dim * 2, k_group_size, dim * 2, dim)
        self.mixer = Mamba(dim, bimamba_type=bimamba_type)

    def forward(self, center: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.lfa(center, self.norm1(x)))
        return x + self.drop_path(self.mixer(self.norm2(x)))


class Trans3DBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0, k_group_size: int = 8):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.k_group_size = k_group_size
        self.lfa = LNPBlock(dim * 2, k_group_size, dim * 2, dim)
        self.mixer = Block(dim=dim, num_heads=6, mlp_ratio=4.0, qkv_bias=False, drop_path=0.0)

    def forward(self, center: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.lfa(center, self.norm1(x)))
        return x + self.drop_path(self.mixer(self.norm2(x)))


class Mamba3DEncoder(nn.Module):
    """`depth` Mamba3D blocks; Trans3D block n // 3 after block n when (n + 1) % 3 == 0."""

    def __init__(self, k_group_size: int = 8, embed_dim: int = 768, depth: int = 4,
                 drop_path_rate: Union[float, List[float]] = 0.0, bimamba_type: str = "v4"):
        super().__init__()
        rate = (lambda i: drop_path_rate[i]) if isinstance(drop_path_rate, list) else (lambda i: drop_path_rate)
        self.blocks = nn.ModuleList([
            Mamba3DBlock(embed_dim, drop_path=rate(i), k_group_size=k_group_size, bimamba_type=bimamba_type)
            for i in range(depth)])
        self.blocks_vit = nn.ModuleList([
            Trans3DBlock(embed_dim, drop_path=rate(i), k_group_size=k_group_size)
            for i in range(depth // 3)])

    def forward(self, center: torch.Tensor, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for n, block in enumerate(self.blocks):
            x = block(center, x + pos)
            if (n + 1) % 3 == 0 and n // 3 < len(self.blocks_vit):
                x = self.blocks_vit[n // 3](center, x + pos)
        return x


def _pos_mlp(trans_dim: int, act: type) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 128), act(), nn.Linear(128, trans_dim))


# ---------------------------------------------------------------- classifier
class Mamba3D(nn.Module):
    """PointMAP hybrid classifier (the `Mamba3D` class of PointMAP/Mamba3D.py).

    official_mean_bug=True reproduces `x[:, 1:].mean(1)[0]` (first sample's mean for every sample).
    """

    def __init__(self, trans_dim: int = 384, depth: int = 12, drop_path_rate: float = 0.1, cls_dim: int = 15,
                 num_heads: int = 6, group_size: int = 32, num_group: int = 128, encoder_dims: int = 384,
                 center_local_k: int = 4, bimamba_type: str = "v4", label_smooth: float = 0.0,
                 official_mean_bug: bool = True):
        super().__init__()
        self.trans_dim, self.depth, self.cls_dim, self.num_heads = trans_dim, depth, cls_dim, num_heads
        self.group_size, self.num_group, self.encoder_dims = group_size, num_group, encoder_dims
        self.official_mean_bug = official_mean_bug
        self.encoder = Encoder(encoder_channel=encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, trans_dim))
        self.pos_embed = _pos_mlp(trans_dim, nn.SiLU)
        self.group_divider = Group(num_group=num_group, group_size=group_size)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = Mamba3DEncoder(k_group_size=center_local_k, embed_dim=trans_dim, depth=depth,
                                     drop_path_rate=dpr, bimamba_type=bimamba_type)
        self.norm = nn.LayerNorm(trans_dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(trans_dim * 2, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, cls_dim))
        self.loss_ce = nn.CrossEntropyLoss(label_smoothing=label_smooth)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.cls_pos, std=0.02)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        """pts (B, N, 3) -> logits (B, cls_dim)."""
        neighborhood, center = self.group_divider(pts)
        group_input_tokens = self.encoder(neighborhood)
        B = group_input_tokens.size(0)
        x = torch.cat((self.cls_token.expand(B, -1, -1), group_input_tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(B, -1, -1), self.pos_embed(center)), dim=1)
        x = self.norm(self.blocks(center, x, pos))
        mean = x[:, 1:].mean(1)[0] if self.official_mean_bug else x[:, 1:].mean(1)
        concat_f = torch.cat([x[:, 0], x[:, 1:].max(1)[0] + mean], dim=-1)
        return self.cls_head_finetune(concat_f)


# ---------------------------------------------------------------- pretraining
def _point_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv1d)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


class MaskMamba(nn.Module):
    """Pretraining encoder; `forward(neighborhood, center, mask)` with an explicit (B, G) bool mask."""

    def __init__(self, trans_dim: int = 384, depth: int = 12, drop_path_rate: float = 0.1, num_heads: int = 6,
                 group_size: int = 32, num_group: int = 64, encoder_dims: int = 384, center_local_k: int = 4,
                 bimamba_type: str = "v4"):
        super().__init__()
        self.trans_dim, self.depth, self.num_heads = trans_dim, depth, num_heads
        self.group_size, self.num_group, self.encoder_dims = group_size, num_group, encoder_dims
        self.encoder = Encoder(encoder_channel=encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, trans_dim))
        self.pos_embed = _pos_mlp(trans_dim, nn.SiLU)
        self.group_divider = Group(num_group=num_group, group_size=group_size)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = Mamba3DEncoder(k_group_size=center_local_k, embed_dim=trans_dim, depth=depth,
                                     drop_path_rate=dpr, bimamba_type=bimamba_type)
        self.norm = nn.LayerNorm(trans_dim)
        self.apply(_point_init)

    def forward(self, neighborhood: torch.Tensor, center: torch.Tensor,
                bool_masked_pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """neighborhood (B, G, M, 3), center (B, G, 3), mask (B, G) True = masked -> (B, V, C), mask."""
        group_input_tokens = self.encoder(neighborhood)
        batch_size, _, C = group_input_tokens.size()
        x_vis = group_input_tokens[~bool_masked_pos].reshape(batch_size, -1, C)
        masked_center = center[~bool_masked_pos].reshape(batch_size, -1, 3)
        pos = self.pos_embed(masked_center)
        x_vis = self.norm(self.blocks(masked_center, x_vis, pos))
        return x_vis, bool_masked_pos


def row_causal_mask(seq_len: int) -> torch.Tensor:
    """Additive (L, L) mask, 0 where row(key) <= row(query), -inf elsewhere; rows of sqrt(L) tokens."""
    per_row = int(seq_len ** 0.5)
    assert per_row ** 2 == seq_len, "seq_len is not a perfect square!"
    mask = torch.tril(torch.ones(per_row, per_row))
    mask = mask.masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0)
    mask = torch.repeat_interleave(mask, per_row, dim=0)
    return torch.repeat_interleave(mask, per_row, dim=1)


class TransformerDecoder(nn.Module):
    def __init__(self, embed_dim: int = 384, depth: int = 4, num_heads: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop_path_rate: Union[float, List[float]] = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias,
                  drop_path=drop_path_rate[i] if isinstance(drop_path_rate, list) else drop_path_rate)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, return_token_num: int) -> torch.Tensor:
        """x, pos (B, G, C) in [visible; masked] order -> (B, return_token_num, C)."""
        mask = row_causal_mask(x.shape[1]).to(x.device)
        for block in self.blocks:
            x = block(x + pos, mask=mask)
        return self.head(self.norm(x[:, -return_token_num:]))


class Point_MAE(nn.Module):
    """PointMAP pretraining model (the `Point_MAE` class of PointMAP/Mamba3D.py)."""

    def __init__(self, trans_dim: int = 384, depth: int = 12, drop_path_rate: float = 0.1, num_heads: int = 6,
                 group_size: int = 32, num_group: int = 64, encoder_dims: int = 384, center_local_k: int = 4,
                 bimamba_type: str = "v4", loss: str = "cdl2", decoder_depth: int = 4,
                 decoder_num_heads: int = 6, decoder_drop_path_rate: float = 0.1):
        super().__init__()
        self.trans_dim, self.group_size, self.num_group = trans_dim, group_size, num_group
        self.MAE_encoder = MaskMamba(trans_dim, depth, drop_path_rate, num_heads, group_size, num_group,
                                     encoder_dims, center_local_k, bimamba_type)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.decoder_pos_embed = _pos_mlp(trans_dim, nn.GELU)
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        dpr = torch.linspace(0, decoder_drop_path_rate, decoder_depth, device="cpu").tolist()
        self.MAE_decoder = TransformerDecoder(embed_dim=trans_dim, depth=decoder_depth,
                                              drop_path_rate=dpr, num_heads=decoder_num_heads)
        self.group_divider = Group(num_group=num_group, group_size=group_size)
        self.increase_dim = nn.Sequential(nn.Conv1d(trans_dim, 3 * group_size, 1))
        trunc_normal_(self.mask_token, std=0.02)
        if loss == "cdl1":
            self.loss_func = ChamferDistanceL1()
        elif loss == "cdl2":
            self.loss_func = ChamferDistanceL2()
        else:
            raise ValueError(f"loss must be 'cdl1' or 'cdl2', got {loss!r}")

    def forward(self, pts: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pts (B, N, 3); mask (B, G) bool, True = masked (same count per cloud).

        Returns (loss, rebuilt points (B*M, group_size, 3), target points (B*M, group_size, 3)),
        both relative to their group centres, masked groups in (sample, group) order.
        """
        neighborhood, center = self.group_divider(pts)
        x_vis, mask = self.MAE_encoder(neighborhood, center, mask)
        B, _, C = x_vis.shape
        pos_emd_vis = self.decoder_pos_embed(center[~mask]).reshape(B, -1, C)
        pos_emd_mask = self.decoder_pos_embed(center[mask]).reshape(B, -1, C)
        _, N, _ = pos_emd_mask.shape
        x_full = torch.cat([x_vis, self.mask_token.expand(B, N, -1)], dim=1)
        pos_full = torch.cat([pos_emd_vis, pos_emd_mask], dim=1)
        x_rec = self.MAE_decoder(x_full, pos_full, N)
        B, M, C = x_rec.shape
        rebuild_points = self.increase_dim(x_rec.transpose(1, 2)).transpose(1, 2).reshape(B * M, -1, 3)
        gt_points = neighborhood[mask].reshape(B * M, -1, 3)
        return self.loss_func(rebuild_points, gt_points), rebuild_points, gt_points
