"""Conversion between the official MAP 2D checkpoint names and ours.

Official (``models_mamba.VisionMamba``)  ->  ours (:class:`image.models.MAPImagePretrainer`)::

    patch_embed.proj.*            tokenizer.patch_embed.proj.*
    pos_embed                     tokenizer.pos_embed
    layers.{i}.*                  encoder.layers.{i}.*
    blocks.{j}.*                  encoder.blocks.{j}.*
    norm_f.*                      encoder.norm_f.*
    decoder_embed.*, mask_token   (same)
    decoder_pos_embed_learned     decoder_pos.pos_embed
    decoder_blocks.{k}.*          decoder.blocks.{k}.*
    decoder_norm.*                decoder.norm.*
    ar_pred.*                     head.*

The official pretraining model also carries classifier parameters that pretraining never uses
(``cls_token``, ``pos_embed_cls``, ``neck``, ``norm_neck``, and a 1000-class ``head``). Our
pretraining model does not create them: ``from_official`` drops them and logs a note (pass
``keep_unused=True`` to keep them under their own names, which are the names of our classifier).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Tuple

import torch

from map_core.weights import CheckpointShapeError  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

# (official prefix, our prefix); a prefix ending without "." matches that exact key
_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("patch_embed.", "tokenizer.patch_embed."),
    ("pos_embed", "tokenizer.pos_embed"),
    ("layers.", "encoder.layers."),
    ("blocks.", "encoder.blocks."),
    ("norm_f.", "encoder.norm_f."),
    ("decoder_embed.", "decoder_embed."),
    ("mask_token", "mask_token"),
    ("decoder_pos_embed_learned", "decoder_pos.pos_embed"),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("ar_pred.", "head."),
)
UNUSED_OFFICIAL = ("cls_token", "pos_embed_cls", "neck.", "norm_neck.", "head.")


def _match(key: str, prefix: str) -> bool:
    return key.startswith(prefix) if prefix.endswith(".") else key == prefix


def unwrap_checkpoint(ckpt: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: ``ckpt["model"]`` (or ``"state_dict"``) when present,
    with a DDP ``module.`` prefix stripped."""
    for key in ("model", "state_dict"):
        if key in ckpt and isinstance(ckpt[key], Mapping):
            ckpt = ckpt[key]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in ckpt.items()}


def is_official(state_dict: Mapping[str, Any]) -> bool:
    """True when the keys use the official flat names (``layers.0...``, ``patch_embed...``)."""
    return any(k.startswith(("layers.", "patch_embed.", "decoder_blocks.", "ar_pred.")) for k in state_dict)


def from_official(ckpt: Mapping[str, Any], keep_unused: bool = False) -> Dict[str, torch.Tensor]:
    """Official MAP 2D state dict (or ``{"model": ...}`` checkpoint) -> our names.

    Raises KeyError for a key that is neither renamed nor a known unused parameter.
    """
    state_dict = unwrap_checkpoint(ckpt)
    out: Dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state_dict.items():
        if any(_match(key, p) for p in UNUSED_OFFICIAL):
            if keep_unused:
                out[key] = value
            else:
                dropped.append(key)
            continue
        for src, dst in _RENAMES:
            if _match(key, src):
                out[dst + key[len(src):]] = value
                break
        else:
            raise KeyError(f"official checkpoint key '{key}' has no counterpart in the MAP image model")
    if dropped:
        log.info("from_official: dropped %d parameters unused in pretraining: %s", len(dropped),
                 ", ".join(sorted(dropped)))
    return out


def to_official(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our pretraining state dict -> official names. The official unused classifier parameters
    are not created, so load the result into the official model with ``strict=False``."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in unwrap_checkpoint(state_dict).items():
        for src, dst in _RENAMES:
            if _match(key, dst):
                out[src + key[len(dst):]] = value
                break
        else:
            raise KeyError(f"key '{key}' has no official counterpart")
    return out


def official_unused_numel(embed_dim: int, num_cls_tokens: int, cls_reduce: int,
                          num_classes: int = 1000) -> int:
    """How many parameters the official pretraining model holds that pretraining never uses."""
    n = 2 * num_cls_tokens * embed_dim  # cls_token, pos_embed_cls
    if cls_reduce > 1:
        n += embed_dim * (embed_dim // cls_reduce) + embed_dim * num_cls_tokens // cls_reduce
    if num_classes > 0:
        n += (embed_dim * (num_cls_tokens // cls_reduce) + 1) * num_classes
    return n
