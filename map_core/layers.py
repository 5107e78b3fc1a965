"""Building blocks shared by every MAP model: norms, the Mamba add-norm layer, attention blocks.

Parameter names follow the official code (timm ViT names for attention blocks, Mamba's
``mixer``/``norm`` for Mamba layers, MAP 2D's ``norm2_1``/``norm2_2``/``attn2`` for decoder
blocks) so official weights load without renaming.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block

from .compile import repeated_block


class DropPath(nn.Module):
    """Stochastic depth per sample, as timm's ``DropPath`` (drop a sample's branch with probability
    ``drop_prob``, scale the kept ones by 1 / keep), with the rate held in a tensor buffer
    (non-persistent: state dicts are unchanged). ``torch.compile`` then makes one graph for the
    layers of a drop-path schedule instead of one per rate (a float attribute is a guard: 24
    Mamba layers of 24 rates were 24 compilations, past dynamo's cache limit)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {drop_prob}")
        self.register_buffer("keep_prob", torch.tensor(1.0 - drop_prob), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        keep.bernoulli_(self.keep_prob)
        return x * (keep / self.keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={1.0 - float(self.keep_prob):.3f}"


def make_drop_path(rate: float, in_schedule: bool = False) -> nn.Module:
    """:class:`DropPath` for a positive rate, else the identity. ``in_schedule``: the layer is one of
    a schedule with some positive rate; it keeps a DropPath even at rate 0, so that every layer of
    the schedule traces the same graph under ``torch.compile``."""
    return DropPath(rate) if rate > 0 or in_schedule else nn.Identity()


def xavier_init(m: nn.Module, layer_norms: bool = False) -> None:
    """MAE-style init for ``module.apply``: xavier-uniform Linear weights, zero biases, and with
    ``layer_norms`` LayerNorm weight 1 / bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif layer_norms and isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def make_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """``"rms"`` -> RMSNorm (weight only), ``"layer"`` -> LayerNorm."""
    if kind == "rms":
        return nn.RMSNorm(dim, eps=eps)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm '{kind}'; expected 'rms' or 'layer'")


@repeated_block
class MambaLayer(nn.Module):
    """Mamba's add -> norm -> mixer block (the fused add-norm semantics of ``mamba_ssm``).

    ``forward(hidden, residual)`` returns ``(mixer(norm(r)), r)`` with
    ``r = hidden`` for the first layer (``residual is None``), else ``residual + drop_path(hidden)``.
    hidden, residual: (B, L, C). The residual stream is kept in fp32 when ``residual_in_fp32``.
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        norm: str = "rms",
        eps: float = 1e-5,
        drop_path: float = 0.0,
        residual_in_fp32: bool = True,
        in_schedule: bool = False,
    ):
        super().__init__()
        self.mixer = mixer
        self.norm = make_norm(norm, dim, eps)
        self.drop_path = make_drop_path(drop_path, in_schedule)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None, causal: bool = False):
        """``causal=True`` calls ``mixer(h, causal=True)`` (``MambaMixer``: output at t from positions
        <= t only); otherwise ``mixer(h)``, so any one-argument mixer fits."""
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return (self.mixer(hidden, causal=True) if causal else self.mixer(hidden)), residual


class DualNormAttention(nn.Module):
    """Self-attention whose queries and keys/values come from two differently normalised copies of
    the same tokens, with separate ``q`` and ``kv`` projections (MAP 2D decoder's ``attn2``).

    q_in: (B, Lq, C); kv_in: (B, Lk, C); attn_mask: bool (Lq, Lk), True = may attend.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q_in, kv_in, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = q_in.shape
        h, head = self.num_heads, c // self.num_heads
        q = self.q(q_in).view(b, n, h, head).transpose(1, 2)
        k, v = self.kv(kv_in).view(b, kv_in.shape[1], 2, h, head).permute(2, 0, 3, 1, 4)
        # The fused SDPA kernels need a head size divisible by 8 (MAP 2D's decoder has 192 / 16 = 12);
        # otherwise SDPA falls back to its math path, in fp32. Zero columns change neither q.k nor
        # the first ``head`` columns of attn @ v; the scale stays that of the true head size.
        pad = -head % 8
        if pad:
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=head ** -0.5)
        return self.proj(y[..., :head].transpose(1, 2).reshape(b, n, c))


@repeated_block
class TransformerBlock(Block):
    """Pre-norm Transformer block: timm's ViT ``Block`` (names norm1, attn.qkv, attn.proj, norm2,
    mlp.fc1, mlp.fc2), with LayerNorms of eps ``norm_eps``.

    x: (B, L, C) -> (B, L, C); attn_mask: bool (L, L) or (B, 1, L, L), True = may attend.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path,
                         norm_layer=partial(nn.LayerNorm, eps=norm_eps))
        self.drop_path1, self.drop_path2 = make_drop_path(drop_path), make_drop_path(drop_path)


@repeated_block
class DualNormBlock(nn.Module):
    """MAP 2D decoder block: the query and the keys/values get their own LayerNorm.

    ``x = x + attn2(norm2_1(x), norm2_2(x)); x = x + mlp(norm2(x))``. x: (B, L, C).
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        drop_path: float = 0.0, norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm2_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2_2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = DualNormAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = make_drop_path(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn2(self.norm2_1(x), self.norm2_2(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))
