"""Official Mamba3D / PointMAP / Point-MAE state dicts -> our module names.

Our models name the point-group tokeniser ``tokenizer`` and the hybrid encoder (blocks + final
norm) ``encoder``; the rest is as official. Key by key:

| official | ours |
| --- | --- |
| ``encoder.first_conv.*``, ``encoder.second_conv.*`` (mini-PointNet) | ``tokenizer.encoder.*`` |
| ``pos_embed.*`` | ``tokenizer.pos_embed.*`` |
| ``blocks.blocks.{i}.*``, ``blocks.blocks_vit.{j}.*`` | ``encoder.blocks.blocks...`` |
| ``norm.*`` | ``encoder.norm.*`` |
| ``cls_token``, ``cls_pos``, ``cls_head_finetune.*`` | unchanged (classifier) |
| ``MAE_encoder.<k>`` | as ``<k>`` above |
| ``MAE_decoder.blocks.*`` / ``MAE_decoder.norm.*`` | ``decoder.blocks.*`` / ``decoder.norm.*`` |
| ``decoder_pos_embed.*`` | ``decoder_pos.*`` |
| ``increase_dim.0.*`` | ``head.*`` |
| ``mask_token`` | ``mask_token`` |

The pretraining encoder's ``MAE_encoder.cls_token`` / ``cls_pos`` exist officially but are never
used in pretraining; they are dropped unless ``keep_unused_cls`` (the official finetune loads them
into the classifier, so ``PointMAPClassifier.load_pretrained`` keeps them). Keys already in our
naming pass through unchanged, so conversion is idempotent.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

WRAPPER_PREFIXES = ("module.", "base_model.")
_RENAMES = (  # (official prefix, our prefix), first match wins
    ("encoder.first_conv.", "tokenizer.encoder.first_conv."),
    ("encoder.second_conv.", "tokenizer.encoder.second_conv."),
    ("pos_embed.", "tokenizer.pos_embed."),
    ("blocks.", "encoder.blocks."),
    ("norm.", "encoder.norm."),
    ("MAE_decoder.blocks.", "decoder.blocks."),
    ("MAE_decoder.norm.", "decoder.norm."),
    ("decoder_pos_embed.", "decoder_pos."),
    ("increase_dim.0.", "head."),
)
UNUSED_PRETRAIN_KEYS = ("cls_token", "cls_pos")


def strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove leading ``module.`` (DDP) and ``base_model.`` (Mamba3D checkpoints) from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def convert_key(key: str) -> Optional[str]:
    """One official key -> ours (None for ``MAE_encoder.cls_token`` / ``cls_pos``, handled by the caller)."""
    if key.startswith("MAE_encoder."):
        key = key[len("MAE_encoder."):]
        if key in UNUSED_PRETRAIN_KEYS:
            return None
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def from_official(state_dict: Mapping[str, torch.Tensor], keep_unused_cls: bool = False) -> Dict[str, torch.Tensor]:
    """Official finetuned ``Mamba3D`` (``base_model``) or pretraining ``Point_MAE`` weights -> ours.

    Accepts a whole checkpoint dict (``{"base_model": ...}``) too. Wrapper prefixes are stripped
    first. Raises ValueError when two keys map to the same name.
    """
    if "base_model" in state_dict and isinstance(state_dict["base_model"], Mapping):
        state_dict = state_dict["base_model"]
    out: Dict[str, torch.Tensor] = {}
    for key, value in strip_wrappers(state_dict).items():
        new = convert_key(key)
        if new is None:
            if not keep_unused_cls:
                continue
            new = key[len("MAE_encoder."):]
        if new in out:
            raise ValueError(f"from_official: two keys map to '{new}' (second: '{key}')")
        out[new] = value
    return out
