"""The multi-scale adapter: the plain MAP image encoder as the backbone of dense heads.

The encoder sees the patch tokens of an image of any size (the learned position table is resized
bicubically to the image's grid, as timm does; the Mamba layers take any length), is tapped after
evenly spaced layout steps (:func:`map_core.encoder.evenly_spaced_taps`, each tap through the final
norm), and a simple feature pyramid turns the stride-p maps (p the patch size, 16: the 1/16 maps)
into maps at strides p/4, p/2, p, 2p (1/4 ... 1/32), and 4p (1/64) when asked:

* ``style="beit"`` (BEiT / MAE segmentation, mmseg's ``Feature2Pyramid``): four taps, one per
  level; deconv 2x2 (D -> D), norm, GELU, deconv 2x2; deconv 2x2; identity; max pool 2x2. The levels
  keep the D channels.
* ``style="vitdet"`` (ViTDet's simple feature pyramid): every level from the last tap; deconv 2x2
  (D -> D/2), norm, GELU, deconv 2x2 (-> D/4); deconv 2x2 (-> D/2); identity; max pool 2x2; then per
  level a 1x1 conv to ``out_channels`` and a 3x3 conv, each with a norm and no bias; the extra
  1/64 level is the 1/32 one subsampled by 2 (detectron2's ``LastLevelMaxPool``).

Module names: ``tokenizer`` and ``encoder`` as the pretraining model's (so its checkpoints, and
the official ones through :mod:`image.convert`, load without renaming), ``feature_pyramid``, and
the heads of the model built on it. Layer-wise lr decay groups: tokeniser 0, layout step k k + 1,
pyramid and heads last (:func:`map_core.encoder.layer_decay_groups`, the classifier's too).
"""
from __future__ import annotations

import logging
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torchvision.ops import Conv2dNormActivation

from map_core.encoder import evenly_spaced_taps, layer_decay_groups
from map_core.weights import LoadsPretrained, StateDict, rename_keys

from .convert import is_official, official_key
from .models import image_encoder, official_init
from .tokenizer import ImagePatchTokenizer, fit_pos_embed

log = logging.getLogger(__name__)

ENCODER_PREFIXES = ("tokenizer.", "encoder.")
PYRAMID_STYLES = ("beit", "vitdet")


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """``"batch"`` -> BatchNorm2d, ``"layer"`` -> LayerNorm over the channels of (B, C, H, W) maps."""
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "layer":
        return LayerNorm2d
    raise ValueError(f"unknown norm '{kind}' (choose batch or layer)")


class SimpleFeaturePyramid(nn.Module):
    """forward(maps: list of (B, D, h, w) at stride p, one per level (``beit``) or one (``vitdet``))
    -> [(B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w), (B, C, h/2, w/2)] (+ (B, C, h/4, w/4) with
    ``extra_level``); C = D for ``beit``, ``out_channels`` for ``vitdet``. h, w must be even."""

    def __init__(self, dim: int, style: str = "beit", norm: str = "batch", out_channels: int = 256,
                 extra_level: bool = False):
        super().__init__()
        if style not in PYRAMID_STYLES:
            raise ValueError(f"unknown pyramid style '{style}' (choose {' or '.join(PYRAMID_STYLES)})")
        self.style, self.extra_level = style, extra_level
        make_norm = norm_layer(norm)
        half, quarter = (dim, dim) if style == "beit" else (dim // 2, dim // 4)
        self.scales = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, half, 2, 2), make_norm(half), nn.GELU(),
                          nn.ConvTranspose2d(half, quarter, 2, 2)),
            nn.ConvTranspose2d(dim, half, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2, 2),
        ])
        if style == "vitdet":
            self.outputs = nn.ModuleList(
                nn.Sequential(Conv2dNormActivation(width, out_channels, 1, norm_layer=make_norm, activation_layer=None),
                              Conv2dNormActivation(out_channels, out_channels, 3, norm_layer=make_norm,
                                                   activation_layer=None))
                for width in (quarter, half, dim, dim))
        self.out_channels = out_channels if style == "vitdet" else dim
        self.num_inputs = 4 if style == "beit" else 1

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(maps) != self.num_inputs:
            raise ValueError(f"the {self.style} pyramid takes {self.num_inputs} maps, got {len(maps)}")
        inputs = list(maps) if self.style == "beit" else list(maps) * 4
        levels = [scale(x) for scale, x in zip(self.scales, inputs)]
        if self.style == "vitdet":
            levels = [out(x) for out, x in zip(self.outputs, levels)]
        if self.extra_level:
            levels.append(F.max_pool2d(levels[-1], kernel_size=1, stride=2))
        return levels


class MultiScaleAdapter(LoadsPretrained, nn.Module):
    """Tokeniser + hybrid encoder + simple feature pyramid; the dense models subclass it.

    ``features(imgs (B, C, H, W))`` -> the pyramid of the image padded with zeros on the right and
    bottom to a multiple of 2p (so every level's size is exact). ``num_taps`` evenly spaced layout
    steps are tapped (``beit`` needs 4, ``vitdet`` 1: the last). ``head_prefixes``: the state-dict
    prefixes of the subclass's heads, by which its own checkpoints are told from encoder ones.
    """

    head_prefixes: Tuple[str, ...] = ()

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, layout: str = "MMMT*8", num_heads: int = 12, mlp_ratio: float = 2.0,
                 norm: str = "rms", drop_path_rate: float = 0.1, num_taps: int = 4, pyramid: str = "beit",
                 pyramid_norm: str = "batch", out_channels: int = 256, extra_level: bool = False):
        super().__init__()
        self.tokenizer = ImagePatchTokenizer(img_size, patch_size, in_chans, embed_dim)
        self.encoder = image_encoder(embed_dim, layout, num_heads, mlp_ratio, norm, drop_path_rate)
        self.taps = evenly_spaced_taps(len(self.encoder.layout), num_taps)
        official_init(self.encoder)  # the pretraining model's init, so scratch and pretrained runs start alike
        self.feature_pyramid = SimpleFeaturePyramid(embed_dim, pyramid, pyramid_norm, out_channels, extra_level)
        if num_taps != self.feature_pyramid.num_inputs:
            raise ValueError(f"the {pyramid} pyramid takes {self.feature_pyramid.num_inputs} taps, got {num_taps}")
        self.size_divisor = 2 * patch_size

    def pad(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (B, C, H, W) -> (B, C, H', W') zero-padded on the right and bottom to multiples of 2p."""
        d = self.size_divisor
        return F.pad(imgs, (0, -imgs.shape[-1] % d, 0, -imgs.shape[-2] % d))

    def features(self, imgs: torch.Tensor) -> List[torch.Tensor]:
        """imgs: (B, C, H, W), any size -> pyramid levels of the padded image (see the module docstring)."""
        imgs = self.pad(imgs)
        x, pos = self.tokenizer.embed(imgs)
        h, w = self.tokenizer.grid_of(imgs)
        taps = self.encoder(x, pos, return_layers=self.taps)
        return self.feature_pyramid([t.transpose(1, 2).reshape(t.shape[0], -1, h, w) for t in taps])

    def no_weight_decay(self) -> set:
        return {"tokenizer.pos_embed"}

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm layer-decay groups: tokeniser 0, layout step k k + 1, pyramid and heads last."""
        return layer_decay_groups(self.encoder.layout, ("tokenizer.",))

    def adapt_pretrained(self, sd: StateDict, source: str) -> Tuple[StateDict, List[str]]:
        """A checkpoint of this dense model (it has the heads) loads whole; any other image
        checkpoint (MAP pretraining or classifier, ours or official) gives its tokeniser and encoder
        only. ``pos_embed`` is resized to this model's grid. Returns (state dict, dropped keys)."""
        skipped: List[str] = []
        if is_official(sd):
            sd, skipped = rename_keys(sd, official_key, source)
        if not any(k.startswith(self.head_prefixes) for k in sd):
            dropped = [k for k in sd if not k.startswith(ENCODER_PREFIXES)]
            if dropped:
                log.info("load_pretrained: keeping the tokeniser and encoder of %s, dropping %d other parameters "
                         "(%s)", source, len(dropped), ", ".join(sorted({k.split('.')[0] for k in dropped})))
            sd = {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}
            skipped += dropped
        return fit_pos_embed(sd, self.tokenizer.grid_size), skipped
