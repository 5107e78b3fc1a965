"""The image tokeniser of MAP: non-overlapping patches, a learned 2D position embedding.

``patchify`` lays a patch out in (h, w, p, q, c) order (MAE / MAP 2D), so a predicted row of
``p * p * c`` values reshapes back to an image with ``unpatchify``. The position embedding is a
learned (1, H*W, C) table for the grid the model was built for; other grids get a bicubic resize.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from einops import rearrange
from timm.layers import PatchEmbed, lecun_normal_, resample_abs_pos_embed, to_2tuple, trunc_normal_

from map_core.tokens import Tokens
from map_core.weights import CheckpointShapeError

log = logging.getLogger(__name__)


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """imgs: (B, C, H, W) -> (B, H/p * W/p, p*p*C) in (h, w, p, q, c) order."""
    height, width = imgs.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by patch size {patch_size}")
    return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(x: torch.Tensor, patch_size: int, grid: Tuple[int, int], channels: int = 3) -> torch.Tensor:
    """x: (B, h*w, p*p*C) in (h, w, p, q, c) order -> (B, C, h*p, w*p)."""
    h, w = grid
    p = patch_size
    if x.dim() != 3 or x.shape[1] != h * w or x.shape[2] != p * p * channels:
        raise ValueError(
            f"unpatchify expects (B, {h * w}, {p * p * channels}) for grid {grid}, patch {p}, "
            f"{channels} channels; got {tuple(x.shape)}"
        )
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, p=p, q=p)


def resize_pos_embed(pos: torch.Tensor, new_grid: Tuple[int, int], old_grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a (1, old_h*old_w, D) table to (1, new_h*new_w, D)."""
    if tuple(new_grid) == tuple(old_grid):
        return pos
    return resample_abs_pos_embed(pos, list(new_grid), list(old_grid), num_prefix_tokens=0)


def fit_pos_embed(state_dict: Dict[str, torch.Tensor], grid: Tuple[int, int],
                  key: str = "tokenizer.pos_embed") -> Dict[str, torch.Tensor]:
    """``state_dict`` with its square (1, s*s, D) table ``key`` bicubically resized to ``grid`` (a
    copy when it changes; unchanged when absent or already that size). A table that is not square
    raises CheckpointShapeError."""
    if key not in state_dict or state_dict[key].shape[1] == grid[0] * grid[1]:
        return state_dict
    old = state_dict[key].shape[1]
    side = math.isqrt(old)
    if side * side != old:
        raise CheckpointShapeError(f"{key}: cannot infer the grid of a {old}-token table (not square)")
    log.info("load_pretrained: resized %s from %dx%d to %dx%d", key, side, side, *grid)
    return {**state_dict, key: resize_pos_embed(state_dict[key], grid, (side, side))}


class ImagePatchTokenizer(nn.Module):
    """Patch embedding + learned position embedding (``patch_embed.proj``, ``pos_embed``).

    forward(imgs: (B, C, H, W)) -> Tokens(x (B, L, D), pos (1, L, D), coords None,
    target = patchify(imgs) (B, L, p*p*C)). Images of another size than ``img_size`` get a
    bicubically resized position table.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        img_size = to_2tuple(img_size)
        if len(img_size) != 2:
            raise ValueError(f"img_size must be one int or (height, width), got {img_size}")
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.patch_size, self.in_chans = patch_size, in_chans
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        # timm's patch embedding (official name ``proj``), any image size: the grid follows the input
        self.patch_embed = PatchEmbed(None, patch_size, in_chans, embed_dim)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)

    def grid_of(self, imgs: torch.Tensor) -> Tuple[int, int]:
        return (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)

    def num_tokens(self, imgs: torch.Tensor) -> int:
        """How many tokens ``forward(imgs)`` makes (from the shape alone)."""
        h, w = self.grid_of(imgs)
        return h * w

    def position_embedding(self, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """(1, h*w, D) for ``grid`` (default: the built grid)."""
        return resize_pos_embed(self.pos_embed, grid or self.grid_size, self.grid_size)

    def embed(self, imgs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """imgs: (B, C, H, W) -> (patch features (B, L, D), positions (1, L, D))."""
        return self.patch_embed(imgs), self.position_embedding(self.grid_of(imgs))

    def forward(self, imgs: torch.Tensor) -> Tokens:
        x, pos = self.embed(imgs)
        return Tokens(x=x, pos=pos, coords=None, target=patchify(imgs, self.patch_size))


class LearnedPositions(nn.Module):
    """A learned (1, L, D) position table (MAP 2D's decoder positions); forward ignores coords."""

    def __init__(self, length: int, dim: int, std: float = 0.02):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, length, dim))
        nn.init.normal_(self.pos_embed, std=std)

    def forward(self, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.pos_embed
