"""Image classifier with cls / register tokens among the patches (the Mamba-r layout).

Sequence (``get_cls_idx``): with P = H*W patches and n tokens, S = P // (n + 1); n chunks of
[S patches, 1 cls token], then the remaining P - n*S patches. Patches get ``tokenizer.pos_embed``,
cls tokens ``pos_embed_cls``. After the encoder (``norm_f`` included), the n cls outputs are taken,
each reduced by ``neck`` (Linear d -> d / cls_reduce, no bias), flattened to n*d/cls_reduce and
normalised by ``norm_neck`` (RMSNorm); ``head`` classifies. With ``cls_reduce == 1`` there is no
neck and no norm (the flattened cls outputs go to the head). This order follows the Mamba-r release
(``models_mamba.VisionMamba.forward_features``, checked against wangf3014/Mamba-Reg).

``variant``: ``"hybrid"`` (MAP's arrangement), ``"mamba"`` (Mamba layers only) or ``"transformer"``
(ViT blocks only, LayerNorm, mlp ratio 4), the latter two sized to match the hybrid's parameter
count (see :func:`image.models.variant_layout`); the pretraining model builds the same encoder.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache, partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import register_model

from map_core.encoder import layer_decay_groups
from map_core.registry import MODELS, check_kwargs
from map_core.weights import LoadsPretrained, StateDict, rename_keys

from .convert import is_official, official_key
from .models import SIZES, image_encoder, sized_encoder
from .tokenizer import ImagePatchTokenizer, fit_pos_embed

log = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def get_cls_idx(h: int, w: int, n: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Mamba-r register layout for an h x w grid and n tokens.

    Returns (token_idx, cls_positions): ``token_idx`` (P + n,) indexes ``cat([patches, cls])`` into
    sequence order; ``cls_positions`` (n,) are the cls tokens' sequence positions.
    """
    num_patches = h * w
    stride = num_patches // (n + 1)
    order: List[int] = []
    positions: List[int] = []
    for i in range(n):
        order.extend(range(i * stride, (i + 1) * stride))
        positions.append(len(order))
        order.append(num_patches + i)
    order.extend(range(n * stride, num_patches))
    return tuple(order), tuple(positions)


class MAPClassifier(LoadsPretrained, nn.Module):
    """forward(imgs (B, C, H, W)) -> logits (B, num_classes); forward_features -> (B, n*d/cls_reduce)."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        layout: str = "MMMT*8",
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        norm: str = "rms",
        num_cls_tokens: int = 12,
        cls_reduce: int = 1,
        drop_path_rate: float = 0.1,
    ):
        super().__init__()
        if num_cls_tokens < 1:
            raise ValueError(f"num_cls_tokens must be >= 1, got {num_cls_tokens}")
        if embed_dim % cls_reduce:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by cls_reduce {cls_reduce}")
        self.num_cls_tokens, self.cls_reduce, self.num_classes = num_cls_tokens, cls_reduce, num_classes
        self.tokenizer = ImagePatchTokenizer(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, num_cls_tokens, embed_dim))
        self.pos_embed_cls = nn.Parameter(torch.zeros(1, num_cls_tokens, embed_dim))
        self.encoder = image_encoder(embed_dim, layout, num_heads, mlp_ratio, norm, drop_path_rate)
        reduced = embed_dim // cls_reduce
        self.num_features = num_cls_tokens * reduced
        self.neck = nn.Linear(embed_dim, reduced, bias=False) if cls_reduce > 1 else nn.Identity()
        self.norm_neck = nn.RMSNorm(self.num_features, eps=1e-5) if cls_reduce > 1 else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._index_cache: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        """Mamba-r's init: trunc-normal 0.02 for tokens, neck and head; Mamba's GPT-2 pass (zero
        Linear biases except dt_proj; ``out_proj``/``fc2`` kaiming-uniform / sqrt(n_layer))."""
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed_cls, std=0.02)
        for m in (self.neck, self.head):
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
        n_layer = max(1, len(self.encoder.layers))
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
            for attr in ("out_proj", "fc2"):
                sub = getattr(m, attr, None)
                if isinstance(sub, nn.Linear):
                    nn.init.kaiming_uniform_(sub.weight, a=math.sqrt(5))
                    with torch.no_grad():
                        sub.weight /= math.sqrt(n_layer)

    def _register_indices(self, grid: Tuple[int, int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(token order, cls positions) as index tensors on ``device``, made once per grid: a step
        then copies nothing from the host (which a CUDA-graph capture forbids). They are read with
        ``index_select``, whose backward is an ``index_add_``: advanced indexing's backward
        (``index_put_`` with accumulation) synchronises with the host on CUDA, which a capture forbids too."""
        key = (grid, str(device))
        if key not in self._index_cache:
            order, positions = get_cls_idx(*grid, self.num_cls_tokens)
            self._index_cache[key] = (torch.tensor(order, device=device), torch.tensor(positions, device=device))
        return self._index_cache[key]

    def sequence(self, imgs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """imgs -> (encoder input (B, P + n, D) with cls tokens placed, cls positions (n,))."""
        x, pos = self.tokenizer.embed(imgs)
        b = x.shape[0]
        cls = self.cls_token.expand(b, -1, -1) + self.pos_embed_cls
        order, positions = self._register_indices(self.tokenizer.grid_of(imgs), x.device)
        return torch.cat([x + pos, cls], dim=1).index_select(1, order), positions

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W) -> pooled features (B, n * d / cls_reduce)."""
        seq, positions = self.sequence(imgs)
        cls = self.encoder(seq).index_select(1, positions)  # (B, n, D)
        return self.norm_neck(self.neck(cls).flatten(1))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(imgs))

    def no_weight_decay(self) -> set:
        return {"tokenizer.pos_embed", "cls_token", "pos_embed_cls"}

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm layer-decay groups in depth order: stem (tokeniser, tokens) 0, the k-th element of
        the layout k + 1, final norm / neck / head last."""
        return layer_decay_groups(self.encoder.layout, ("tokenizer.", "cls_token", "pos_embed_cls"))

    def adapt_pretrained(self, sd: StateDict, source: str) -> Tuple[StateDict, List[str]]:
        """A pretraining checkpoint (ours or official) or a classifier one -> this classifier's names.

        Official names are converted; pretraining-only parameters (decoder, mask token, pixel head)
        are dropped; ``pos_embed`` is bicubically resized when the grid differs (another grid of a
        non-square table raises CheckpointShapeError). Returns (state dict, dropped keys).
        """
        skipped: List[str] = []
        if is_official(sd):
            is_pretraining = any(k.startswith(("decoder_", "ar_pred.", "mask_token")) for k in sd)
            sd, skipped = rename_keys(sd, partial(official_key, keep_unused=not is_pretraining), source)
        pretraining = any(k.startswith(("decoder.", "decoder_embed.", "decoder_pos.")) for k in sd)
        if pretraining:
            dropped = [k for k in sd if not k.startswith(("tokenizer.", "encoder."))]
            log.info("load_pretrained: dropping %d pretraining-only parameters (%s)", len(dropped),
                     ", ".join(sorted({k.split('.')[0] for k in dropped})))
            sd = {k: v for k, v in sd.items() if k.startswith(("tokenizer.", "encoder."))}
            skipped += dropped
        return fit_pos_embed(sd, self.tokenizer.grid_size), skipped


def map_classifier(
    size: Optional[str] = None,
    variant: str = "hybrid",
    img_size: int | Sequence[int] = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    num_classes: int = 1000,
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    num_cls_tokens: Optional[int] = None,
    cls_reduce: Optional[int] = None,
    layout: Optional[str] = None,
    drop_path_rate: float = 0.1,
) -> MAPClassifier:
    """A classifier of a named ``size`` (tiny ... huge, the pretraining sizes) or explicit sizes.

    Explicit arguments override the size's values; ``layout`` overrides ``variant_layout``.
    ``depth`` is the hybrid's Mamba depth, from which the other variants are sized.
    """
    _, _, _, default_tokens, default_reduce = SIZES[size] if size in SIZES else SIZES["tiny"]
    return MAPClassifier(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        **sized_encoder(size, variant, embed_dim, depth, num_heads, layout),
        num_cls_tokens=default_tokens if num_cls_tokens is None else num_cls_tokens,
        cls_reduce=default_reduce if cls_reduce is None else cls_reduce,
        drop_path_rate=drop_path_rate,
    )


MODELS.register("map_classifier", map_classifier)


def _sized(size: str, name: str, pretrained: bool, kwargs: Dict[str, Any]) -> MAPClassifier:
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"{name}: no hosted weights; build it and call model.load_pretrained(checkpoint)")
    check_kwargs(map_classifier, kwargs, f"model '{name}'")
    if "size" in kwargs:
        raise KeyError(f"model '{name}' fixes size='{size}'; use map_classifier for another size")
    return map_classifier(size=size, **kwargs)


@register_model
@MODELS.register()
def map_tiny_patch16_224_cls(pretrained: bool = False, **kwargs: Any) -> MAPClassifier:
    """Classifier on MAP-Tiny (12 cls tokens, no reduction)."""
    return _sized("tiny", "map_tiny_patch16_224_cls", pretrained, kwargs)


@register_model
@MODELS.register()
def map_small_patch16_224_cls(pretrained: bool = False, **kwargs: Any) -> MAPClassifier:
    """Classifier on MAP-Small (12 cls tokens reduced by 2)."""
    return _sized("small", "map_small_patch16_224_cls", pretrained, kwargs)


@register_model
@MODELS.register()
def map_base_patch16_224_cls(pretrained: bool = False, **kwargs: Any) -> MAPClassifier:
    """Classifier on MAP-Base (12 cls tokens reduced by 4)."""
    return _sized("base", "map_base_patch16_224_cls", pretrained, kwargs)


@register_model
@MODELS.register()
def map_large_patch16_224_cls(pretrained: bool = False, **kwargs: Any) -> MAPClassifier:
    """Classifier on MAP-Large (16 cls tokens reduced by 8; 16 attention heads, see the pretraining
    model's note)."""
    return _sized("large", "map_large_patch16_224_cls", pretrained, kwargs)


@register_model
@MODELS.register()
def map_huge_patch16_224_cls(pretrained: bool = False, **kwargs: Any) -> MAPClassifier:
    """Classifier on MAP-Huge (16 cls tokens reduced by 8)."""
    return _sized("huge", "map_huge_patch16_224_cls", pretrained, kwargs)
