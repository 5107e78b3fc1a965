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

from functools import partial
from typing import Dict, Mapping, Optional

import torch

from map_core.weights import extract_state_dict, rename_keys, rename_prefix

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


def official_key(key: str, keep_unused_cls: bool = False) -> Optional[str]:
    """One official key -> ours; None for ``MAE_encoder.cls_token`` / ``cls_pos`` unless
    ``keep_unused_cls`` (then ``cls_token`` / ``cls_pos``). Other keys pass through unchanged."""
    if key.startswith("MAE_encoder."):
        key = key[len("MAE_encoder."):]
        if key in UNUSED_PRETRAIN_KEYS:
            return key if keep_unused_cls else None
    return rename_prefix(key, _RENAMES) or key


def from_official(state_dict: Mapping[str, torch.Tensor], keep_unused_cls: bool = False) -> Dict[str, torch.Tensor]:
    """Official finetuned ``Mamba3D`` (``base_model``) or pretraining ``Point_MAE`` weights -> ours.

    Accepts a whole checkpoint dict (``{"base_model": ...}``) too; wrapper prefixes (``module.``,
    ``base_model.``) are stripped first. Raises CheckpointKeyError when two keys map to one name.
    """
    rename = partial(official_key, keep_unused_cls=keep_unused_cls)
    return rename_keys(extract_state_dict(state_dict), rename, "from_official")[0]
