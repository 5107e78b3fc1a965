"""MAP 2D pretraining models: patch tokeniser + hybrid Mamba-Transformer encoder + row-wise AR decoder.

Everything method-specific lives in :class:`map_core.pretrain.MAPPretrainer`; this file supplies the
image parts (tokeniser, learned decoder positions, pixel head, norm-pix MSE) and the official sizes.
Module tree (see :mod:`image.convert` for the official names)::

    tokenizer.patch_embed.proj, tokenizer.pos_embed
    encoder.layers.{i}, encoder.blocks.{j}, encoder.norm_f
    decoder_embed, mask_token, decoder_pos.pos_embed, decoder.blocks.{k}, decoder.norm, head

The official pretraining model also holds classifier parameters (cls_token, pos_embed_cls, neck,
norm_neck, head) that pretraining never uses; we do not create them (``image.convert`` drops them
when loading), so our counts are the official ones minus ``official_unused_numel``.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import register_model

from map_core.decoder import ReconstructionDecoder
from map_core.encoder import HybridEncoder, matched_layout
from map_core.layers import MambaLayer, TransformerBlock, xavier_init
from map_core.mixers import MambaMixer
from map_core.losses import masked_mse
from map_core.objective import Objective
from map_core.pretrain import MAPPretrainer
from map_core.registry import MODELS, check_kwargs
from map_core.weights import LoadsPretrained, StateDict, rename_keys

from .convert import is_official, official_key
from .tokenizer import ImagePatchTokenizer, LearnedPositions, patchify, unpatchify

log = logging.getLogger(__name__)

# name -> (embed_dim, Mamba layers, Transformer heads, num_cls_tokens, cls_reduce)
SIZES: Dict[str, Tuple[int, int, int, int, int]] = {
    "tiny": (192, 24, 12, 12, 1),
    "small": (384, 24, 12, 12, 2),
    "base": (768, 24, 12, 12, 4),
    "large": (1024, 48, 16, 16, 8),  # official: 12 heads, which does not divide 1024
    "huge": (1536, 36, 12, 16, 8),
}


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def variant_layout(variant: str, depth: int, embed_dim: int = 192) -> str:
    """Encoder layout per ``variant`` at the parameter count of the hybrid of ``depth`` Mamba layers.

    hybrid: ``official_layout(depth)`` (ViT blocks of mlp ratio 2); mamba: Mamba layers only;
    transformer: ViT blocks of mlp ratio 4 only (see :func:`map_core.encoder.matched_layout`; the
    per-layer counts are measured at ``embed_dim``). Encoder parameters (final norm included):

    | size | hybrid | mamba | transformer |
    | --- | --- | --- | --- |
    | demo (d 96, depth 3) | 3 M + 1 T: 318,240 | 4 M: 324,576 | 3 T: 335,712 |
    | tiny (d 192, depth 24) | 24 M + 8 T: 9,145,536 | 32 M: 9,025,728 | 21 T: 9,342,528 |
    """
    with torch.device("meta"):
        mamba = _numel(MambaLayer(embed_dim, MambaMixer(embed_dim, bidirectional="sequence")))
        hybrid_block = _numel(TransformerBlock(embed_dim, 1, 2.0, qkv_bias=True))
        block = _numel(TransformerBlock(embed_dim, 1, 4.0, qkv_bias=True))
    return matched_layout(variant, depth, mamba, hybrid_block, block)


def encoder_settings(variant: str, depth: int, embed_dim: int) -> Dict[str, Any]:
    """HybridEncoder arguments of a ``variant``: ``layout``, ``mlp_ratio`` and ``norm`` (the pure
    Transformer is a plain pre-norm ViT: mlp ratio 4, LayerNorm; the others: mlp ratio 2, RMSNorm)."""
    transformer = variant == "transformer"
    return dict(layout=variant_layout(variant, depth, embed_dim), mlp_ratio=4.0 if transformer else 2.0,
                norm="layer" if transformer else "rms")


def sized_encoder(size: Optional[str] = None, variant: str = "hybrid", embed_dim: Optional[int] = None,
                  depth: Optional[int] = None, num_heads: Optional[int] = None,
                  layout: Optional[str] = None) -> Dict[str, Any]:
    """The HybridEncoder sizes of a named ``size`` (tiny ... huge; none: tiny's) and ``variant``,
    each overridden by the explicit value given: ``embed_dim``, ``layout``, ``num_heads``,
    ``mlp_ratio``, ``norm``. ``depth`` is the hybrid's Mamba depth, from which the other variants are
    sized (:func:`variant_layout`); the pure Transformer gets ``embed_dim // 64`` heads unless
    ``num_heads`` is given."""
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown size '{size}' (choose one of {', '.join(SIZES)})")
    dim, mamba_depth, heads = SIZES[size or "tiny"][:3]
    dim = dim if embed_dim is None else embed_dim
    mamba_depth = mamba_depth if depth is None else depth
    if num_heads is not None:
        heads = num_heads
    elif variant == "transformer":
        heads = max(1, dim // 64)
    settings = encoder_settings(variant, mamba_depth, dim)
    return dict(embed_dim=dim, layout=layout or settings["layout"], num_heads=heads,
                mlp_ratio=settings["mlp_ratio"], norm=settings["norm"])


def image_encoder(embed_dim: int, layout: str, num_heads: int, mlp_ratio: float, norm: str,
                  drop_path_rate: float) -> HybridEncoder:
    """MAP 2D's encoder, as the pretraining model, the classifier and the dense adapter build it:
    sequence-bidirectional Mamba layers with the drop-path schedule, ViT blocks with a qkv bias (a
    layout of Transformer blocks only puts the drop path on its blocks instead)."""
    return HybridEncoder(embed_dim, layout, bidirectional="sequence", norm=norm, drop_path=drop_path_rate,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                         block_drop_path=drop_path_rate if "M" not in layout else 0.0)


def official_init(model: nn.Module) -> None:
    """The release's last init pass: every Linear xavier-uniform with zero bias, LayerNorm 1/0.

    The release first runs Mamba's GPT-2 style pass (zero Linear biases except dt_proj, rescaled
    ``out_proj``/``fc2``), but this pass overrides every Linear afterwards, ``dt_proj`` bias
    included, so only its net effect is reproduced here. Convs, A_log, D, norms of RMS type and the
    tokens / position tables keep the init their modules gave them.
    """
    for m in model.modules():
        xavier_init(m, layer_norms=True)


class MAPImagePretrainer(LoadsPretrained, MAPPretrainer):
    """MAP pretraining on images. forward(imgs (B, 3, H, W), mask=None) -> (loss, pred (B, L, p*p*3),
    mask bool (B, L)); pred is in token order and (h, w, p, q, c) patch layout."""

    def forward(self, imgs: torch.Tensor, mask: Optional[torch.Tensor] = None, n_mask: Optional[int] = None):
        grid = self.tokenizer.grid_of(imgs)
        if grid != self.tokenizer.grid_size:
            raise ValueError(
                f"pretraining input gives a {grid[0]}x{grid[1]} patch grid, but the decoder positions and "
                f"rows were built for {self.tokenizer.grid_size[0]}x{self.tokenizer.grid_size[1]} "
                f"(img_size {self.tokenizer.grid_size[0] * self.patch_size})"
            )
        return super().forward(imgs, mask, n_mask)

    @property
    def patch_size(self) -> int:
        return self.tokenizer.patch_size

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return unpatchify(x, self.patch_size, grid or self.tokenizer.grid_size, self.tokenizer.in_chans)

    def no_weight_decay(self) -> set:
        return {"tokenizer.pos_embed", "mask_token", "decoder_pos.pos_embed"}

    def adapt_pretrained(self, state_dict: StateDict, source: str) -> Tuple[StateDict, List[str]]:
        """Official MAP 2D names (detected) -> ours, its unused classifier parameters dropped."""
        if not is_official(state_dict):
            return state_dict, []
        log.info("load_pretrained: official MAP 2D names detected, converting")
        return rename_keys(state_dict, official_key, source)


def map_pretrain(
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    embed_dim: int = 192,
    depth: int = 24,
    num_heads: int = 12,
    decoder_dim: int = 192,
    decoder_depth: int = 4,
    decoder_heads: int = 16,
    layout: Optional[str] = None,
    mlp_ratio: Optional[float] = None,
    decoder_mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.1,
    norm_pix_loss: bool = True,
    mask_ratio: float = 0.5,
    mask_ratio_std: float = 0.25,
    mask_ratio_bounds: Sequence[float] = (0.3, 0.7),
    objective: str = "map",
    variant: str = "hybrid",
) -> MAPImagePretrainer:
    """A MAP 2D pretraining model of any size.

    ``objective``: ``map`` (the paper), ``mae`` or ``ar`` (:mod:`map_core.objective`); rows are the
    ``img_size / patch_size`` patches of one image row. ``variant``: ``hybrid`` (a Transformer block
    of ``num_heads`` heads after every third of ``depth`` Mamba layers), ``mamba`` or ``transformer``
    at about the hybrid's parameter count (:func:`variant_layout`); the classifier builds the same
    encoder from the same keys. ``layout`` overrides the arrangement, ``mlp_ratio`` the variant's
    ViT mlp ratio. The decoder is ``decoder_depth`` MAP 2D dual-norm blocks with learned positions;
    the head predicts ``patch_size**2 * in_chans`` pixels.
    """
    tokenizer = ImagePatchTokenizer(img_size, patch_size, in_chans, embed_dim)
    settings = encoder_settings(variant, depth, embed_dim)
    layout = layout or settings["layout"]
    encoder = image_encoder(embed_dim, layout, num_heads, mlp_ratio or settings["mlp_ratio"], settings["norm"],
                            drop_path_rate)
    decoder = ReconstructionDecoder(decoder_dim, decoder_depth, decoder_heads, mlp_ratio=decoder_mlp_ratio, qkv_bias=True,
                        block="dual_norm")
    model = MAPImagePretrainer(
        tokenizer=tokenizer,
        encoder=encoder,
        decoder=decoder,
        decoder_pos=LearnedPositions(tokenizer.num_patches, decoder_dim),
        head=nn.Linear(decoder_dim, patch_size * patch_size * in_chans),
        loss_fn=partial(masked_mse, norm_pix=norm_pix_loss),
        encoder_dim=embed_dim,
        decoder_dim=decoder_dim,
        objective=Objective(objective, tokenizer.num_patches, tokenizer.grid_size[1], mask_ratio, mask_ratio_std,
                            tuple(mask_ratio_bounds), "ceil"),
        decoder_order="original",
        latent_proj=True,
    )
    official_init(model)
    return model


MODELS.register("map_pretrain", map_pretrain)

_TIMM_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _sized(size: str, name: str, pretrained: bool, kwargs: Dict[str, Any]) -> MAPImagePretrainer:
    for key in _TIMM_KEYS:
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"{name}: no hosted weights; build it and call model.load_pretrained(checkpoint)")
    embed_dim, depth, heads, _, _ = SIZES[size]
    args = dict(img_size=224, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=heads)
    args.update(kwargs)
    check_kwargs(map_pretrain, args, f"model '{name}'")
    return map_pretrain(**args)


@register_model
@MODELS.register()
def map_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAPImagePretrainer:
    """MAP-Tiny: d 192, 24 Mamba layers + 8 ViT blocks (12 heads)."""
    return _sized("tiny", "map_tiny_patch16_224", pretrained, kwargs)


@register_model
@MODELS.register()
def map_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAPImagePretrainer:
    """MAP-Small: d 384, 24 Mamba layers + 8 ViT blocks (12 heads)."""
    return _sized("small", "map_small_patch16_224", pretrained, kwargs)


@register_model
@MODELS.register()
def map_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAPImagePretrainer:
    """MAP-Base: d 768, 24 Mamba layers + 8 ViT blocks (12 heads)."""
    return _sized("base", "map_base_patch16_224", pretrained, kwargs)


@register_model
@MODELS.register()
def map_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAPImagePretrainer:
    """MAP-Large: d 1024, 48 Mamba layers + 16 ViT blocks with 16 heads.

    The official large uses 12 heads, which does not divide 1024, so it cannot be built (and no
    weights were released); 16 heads is our choice.
    """
    return _sized("large", "map_large_patch16_224", pretrained, kwargs)


@register_model
@MODELS.register()
def map_huge_patch16_224(pretrained: bool = False, **kwargs: Any) -> MAPImagePretrainer:
    """MAP-Huge: d 1536, 36 Mamba layers + 12 ViT blocks (12 heads)."""
    return _sized("huge", "map_huge_patch16_224", pretrained, kwargs)
