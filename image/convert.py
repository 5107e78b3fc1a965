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
``keep_unused=True`` to keep them under their own names, which are the names of our classifier;
the classifier ``head`` only when there is no ``ar_pred``, which takes that name).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from map_core.weights import extract_state_dict, rename_keys, rename_prefix

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
_TO_OFFICIAL = tuple((ours, official) for official, ours in _RENAMES)
UNUSED_OFFICIAL = ("cls_token", "pos_embed_cls", "neck.", "norm_neck.", "head.")
_KEEP_UNUSED = tuple((key, key) for key in UNUSED_OFFICIAL)  # under their own names: our classifier's


def is_official(state_dict: Mapping[str, Any]) -> bool:
    """True when the keys use the official flat names (``layers.0...``, ``patch_embed...``)."""
    return any(k.startswith(("layers.", "patch_embed.", "decoder_blocks.", "ar_pred.")) for k in state_dict)


def official_key(key: str, keep_unused: bool = False, has_pixel_head: bool = False) -> Optional[str]:
    """One official key -> ours; None for a classifier parameter unused in pretraining (its own
    name with ``keep_unused``, except the classifier ``head`` when the checkpoint has the pixel head
    ``ar_pred``, which becomes our ``head``). Raises KeyError for a key that is neither."""
    if rename_prefix(key, _KEEP_UNUSED) is not None:
        return key if keep_unused and not (has_pixel_head and key.startswith("head.")) else None
    new = rename_prefix(key, _RENAMES)
    if new is None:
        raise KeyError(f"official checkpoint key '{key}' has no counterpart in the MAP image model")
    return new


def from_official(ckpt: Mapping[str, Any], keep_unused: bool = False) -> Dict[str, torch.Tensor]:
    """Official MAP 2D state dict (or ``{"model": ...}`` checkpoint) -> our names.

    Raises CheckpointKeyError (a KeyError) for a key that is neither renamed nor a known unused
    parameter; the dropped unused parameters are logged.
    """
    state_dict = extract_state_dict(ckpt)
    rename = partial(official_key, keep_unused=keep_unused,
                     has_pixel_head=any(k.startswith("ar_pred.") for k in state_dict))
    return rename_keys(state_dict, rename, "from_official")[0]


def _official_name(key: str) -> str:
    new = rename_prefix(key, _TO_OFFICIAL)
    if new is None:
        raise KeyError(f"key '{key}' has no official counterpart")
    return new


def to_official(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our pretraining state dict -> official names. The official unused classifier parameters
    are not created, so load the result into the official model with ``strict=False``."""
    return rename_keys(extract_state_dict(state_dict), _official_name, "to_official")[0]


def official_unused_numel(embed_dim: int, num_cls_tokens: int, cls_reduce: int,
                          num_classes: int = 1000) -> int:
    """How many parameters the official pretraining model holds that pretraining never uses."""
    n = 2 * num_cls_tokens * embed_dim  # cls_token, pos_embed_cls
    if cls_reduce > 1:
        n += embed_dim * (embed_dim // cls_reduce) + embed_dim * num_cls_tokens // cls_reduce
    if num_classes > 0:
        n += (embed_dim * (num_cls_tokens // cls_reduce) + 1) * num_classes
    return n
