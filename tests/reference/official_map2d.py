"""Reference of the official MAP 2D pretraining model (`models_mamba.py` + `mamba_custom.py`).

Same module tree, parameter names and order of operations as the release's `VisionMamba`
pretraining model, in plain PyTorch (no mamba_ssm): RMSNorm add-norm Mamba layers with the
bidirectional "biscan" mixer, a timm ViT block after every third Mamba layer, `norm_f`, and the
row-wise autoregressive cross-attention decoder. `forward(imgs, mask)` takes the mask explicitly
(the release draws it inside `forward`); everything after the draw is as released.

Official facts this file relies on (read from the release):
- mixer fast path: out_proj((y + flip_seq(y_b)) / 2), where y_b runs on in_proj(x) flipped along the
  sequence with the `_b` parameters (`conv1d_b`, `x_proj_b`, `dt_proj_b`, `A_b_log`, `D_b`).
- after Mamba layer n with (n + 1) % 3 == 0: hidden = blocks[n // 3](hidden) + hidden (no drop path
  on that skip); the Mamba residual stream is untouched.
- final: norm_f(residual + drop_path(hidden)), drop path with the full rate at that add.
- the pretraining model still creates cls_token / pos_embed_cls (num_cls_tokens > 0), neck /
  norm_neck (cls_reduce > 1) and head (num_classes = 1000); they are unused in pretraining.
- decoder depth 4 and ar_pred width 768 are hard-coded in the release; here they are arguments with
  the official values as defaults (ar_pred width = patch_size**2 * 3 = 768 at patch 16).
- the loss always normalises pixels (unbiased variance, eps 1e-6) in the release.
"""
import math
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_, lecun_normal_
from timm.models.vision_transformer import Block as Block_vit

from . import mamba_inner_no_out_proj


class RMSNorm(nn.Module):
    """mamba_ssm's RMSNorm: weight only (no bias), computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)


class Mamba(nn.Module):
    """`mamba_custom.Mamba` with biscan=True, fast-path semantics (the path the release trains with)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, layer_idx: Optional[int] = None,
                 biscan: bool = True):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx = layer_idx
        self.biscan = biscan

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self._init_dt(self.dt_proj, dt_min, dt_max, dt_init_floor)
        self.A_log = nn.Parameter(self._a_log())
        self.D = nn.Parameter(torch.ones(self.d_inner))
        if biscan:
            self.A_b_log = nn.Parameter(self._a_log())
            self.conv1d_b = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                      padding=d_conv - 1, bias=conv_bias)
            self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False)
            self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            self.D_b = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def _a_log(self) -> torch.Tensor:
        return torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1))

    def _init_dt(self, dt_proj: nn.Linear, dt_min: float, dt_max: float, floor: float) -> None:
        std = self.dt_rank ** -0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, L, D) -> (B, L, D)."""
        seqlen = hidden_states.shape[1]
        xz = (self.in_proj.weight @ hidden_states.reshape(-1, self.d_model).t())  # (2*d_inner, B*L)
        xz = xz.reshape(xz.shape[0], -1, seqlen).transpose(0, 1)  # (B, 2*d_inner, L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        out = mamba_inner_no_out_proj(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        if not self.biscan:
            return F.linear(out.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)
        out_b = mamba_inner_no_out_proj(xz.flip([-1]), self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                                        self.A_b_log, self.D_b)
        y = (out + out_b.flip([-1])).transpose(1, 2) / 2
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)


class Block(nn.Module):
    """Add -> RMSNorm -> mixer; returns (mixer output, residual). Residual kept in fp32."""

    def __init__(self, dim: int, mixer_cls, norm_cls, residual_in_fp32: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer_cls(dim)
        self.norm = norm_cls(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, residual: Optional[torch.Tensor] = None):
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        if self.residual_in_fp32:
            residual = residual.float()
        hidden_states = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden_states), residual


def create_block(d_model: int, norm_epsilon: float = 1e-5, drop_path: float = 0.0,
                 residual_in_fp32: bool = True, layer_idx: Optional[int] = None) -> Block:
    mixer_cls = partial(Mamba, layer_idx=layer_idx, biscan=True)
    norm_cls = partial(RMSNorm, eps=norm_epsilon)
    block = Block(d_model, mixer_cls, norm_cls, residual_in_fp32=residual_in_fp32, drop_path=drop_path)
    block.layer_idx = layer_idx
    return block


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, C = q.shape
        h = self.num_heads
        q = self.q(q).reshape(B, N, 1, h, C // h).permute(2, 0, 3, 1, 4)[0]
        kv = self.kv(kv).reshape(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale + mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False):
        super().__init__()
        self.attn2 = CrossAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2_1 = nn.LayerNorm(dim)
        self.norm2_2 = nn.LayerNorm(dim)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = q + self.attn2(self.norm2_1(q), self.norm2_2(kv), mask)
        return q + self.mlp(self.norm2(q))


def row_causal_mask(seq_len: int) -> torch.Tensor:
    """Additive (L, L) mask, 0 where row(key) <= row(query), -inf elsewhere; rows of sqrt(L) tokens."""
    per_row = int(seq_len ** 0.5)
    assert per_row ** 2 == seq_len, "seq_len is not a perfect square!"
    mask = torch.tril(torch.ones(per_row, per_row))
    mask = mask.masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, 0)
    mask = torch.repeat_interleave(mask, per_row, dim=0)
    return torch.repeat_interleave(mask, per_row, dim=1)


def _mamba_init(module: nn.Module, n_layer: int) -> None:
    if isinstance(module, nn.Linear) and module.bias is not None:
        if not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    for name, p in module.named_parameters():
        if name in ["out_proj.weight", "fc2.weight"]:
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(n_layer)


def _segm_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        lecun_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class VisionMamba(nn.Module):
    """The official MAP pretraining model. Official sizes: see the `map_*` factories below."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, depth: int = 24, embed_dim: int = 192,
                 channels: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.1,
                 norm_epsilon: float = 1e-5, residual_in_fp32: bool = True, num_cls_tokens: int = 1,
                 cls_reduce: int = 1, num_heads: int = 12, decoder_embed_dim: int = 192,
                 decoder_num_heads: int = 16, decoder_depth: int = 4, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.num_cls_tokens = num_cls_tokens
        self.cls_reduce = cls_reduce
        self.norm_pix_loss = norm_pix_loss
        self.num_classes = num_classes
        self.d_model = self.num_features = self.embed_dim = embed_dim

        self.patch_embed = PatchEmbed(img_size, patch_size, channels, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.seq_len = num_patches
        if num_cls_tokens > 0:
            self.cls_token = nn.Parameter(torch.zeros(1, num_cls_tokens, embed_dim))
            self.pos_embed_cls = nn.Parameter(torch.zeros(1, num_cls_tokens, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.pos_drop = nn.Dropout(0.0)
        if cls_reduce > 1:
            self.neck = nn.Linear(embed_dim, embed_dim // cls_reduce, bias=False)
            self.norm_neck = RMSNorm(embed_dim * num_cls_tokens // cls_reduce, eps=norm_epsilon)
        self.head = (nn.Linear(embed_dim * (num_cls_tokens // cls_reduce), num_classes)
                     if num_classes > 0 else nn.Identity())

        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        inter_dpr = [0.0] + dpr
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.layers = nn.ModuleList([
            create_block(embed_dim, norm_epsilon=norm_epsilon, drop_path=inter_dpr[i],
                         residual_in_fp32=residual_in_fp32, layer_idx=i)
            for i in range(depth)])
        self.blocks = nn.ModuleList([
            Block_vit(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio / 2, qkv_bias=True,
                      norm_layer=nn.LayerNorm)
            for _ in range(depth // 3)])
        self.norm_f = RMSNorm(embed_dim, eps=norm_epsilon)

        self.patch_embed.apply(_segm_init)
        self.head.apply(_segm_init)
        trunc_normal_(self.pos_embed, std=0.02)
        if cls_reduce > 1:
            self.neck.apply(_segm_init)
        if num_cls_tokens > 0:
            trunc_normal_(self.cls_token, std=0.02)
            trunc_normal_(self.pos_embed_cls, std=0.02)
        self.apply(partial(_mamba_init, n_layer=depth))

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, num_patches, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            DecoderBlock(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True)
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.ar_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * channels)

        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.decoder_pos_embed_learned, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
            if m.weight is not None:
                nn.init.constant_(m.weight, 1.0)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, 3, H, W) -> (N, L, p*p*3) in (h, w, p, q, c) order."""
        p = self.patch_embed.patch_size[0]
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], 3, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p ** 2 * 3)

    def forward_mae_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs: (B, 3, H, W); mask: (B, L) float, 1 = masked. Returns (B, L_vis, D)."""
        x = self.patch_embed(imgs)
        bsz, _, embed_dim = x.shape
        x = x + self.pos_embed
        x = x[(1 - mask).nonzero(as_tuple=True)].reshape(bsz, -1, embed_dim)

        residual = None
        hidden_states = x
        for n, layer in enumerate(self.layers):
            hidden_states, residual = layer(hidden_states, residual)
            if (n + 1) % 3 == 0 and n // 3 < len(self.blocks):
                hidden_states = self.blocks[n // 3](hidden_states) + hidden_states
        residual = residual + self.drop_path(hidden_states)
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def forward_mae_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, L_vis, D); mask: (B, L) float. Returns (B, L, p*p*3)."""
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(mask.shape[0], mask.shape[1], 1).to(x.dtype)
        x_after_pad = mask_tokens.clone()
        x_after_pad[(1 - mask).nonzero(as_tuple=True)] = x.reshape(x.shape[0] * x.shape[1], x.shape[2])
        x = x_after_pad + self.decoder_pos_embed_learned
        attn_mask = row_causal_mask(x.shape[1]).to(x.device)
        for block in self.decoder_blocks:
            x = block(x, x, mask=attn_mask)
        return self.ar_pred(self.decoder_norm(x))

    def forward_loss_mae(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: (B, 3, H, W); mask: (B, L) bool, True = masked (same count per image).

        Returns (loss, pred (B, L, p*p*3), mask as float (B, L)).
        """
        mask = mask.to(imgs.dtype)
        x = self.forward_mae_encoder(imgs, mask)
        pred = self.forward_mae_decoder(x, mask)
        loss = self.forward_loss_mae(imgs, pred, mask)
        return loss, pred, mask


def map_tiny_patch16_224(**kwargs) -> VisionMamba:
    return VisionMamba(patch_size=16, embed_dim=192, depth=24, num_cls_tokens=12, **kwargs)


def map_small_patch16_224(**kwargs) -> VisionMamba:
    return VisionMamba(patch_size=16, embed_dim=384, depth=24, num_cls_tokens=12, cls_reduce=2, **kwargs)


def map_base_patch16_224(**kwargs) -> VisionMamba:
    return VisionMamba(patch_size=16, embed_dim=768, depth=24, num_cls_tokens=12, cls_reduce=4, **kwargs)


def map_huge_patch16_224(**kwargs) -> VisionMamba:
    return VisionMamba(patch_size=16, embed_dim=1536, depth=36, num_cls_tokens=16, cls_reduce=8, **kwargs)
