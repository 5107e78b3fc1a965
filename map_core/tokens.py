"""Tokens: what a tokeniser hands to the pretraining module, and the batched gather that picks
tokens (or any per-token values) by index, used for masking, grouping and neighbourhoods alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Tokens:
    """What a tokeniser hands to the pretraining module."""

    x: torch.Tensor  # (B, L, C) token features
    pos: torch.Tensor  # (B or 1, L, C) encoder position embedding
    coords: Optional[torch.Tensor]  # (B, L, D) token positions in input space, or None
    target: torch.Tensor  # (B, L, ...) what each token's reconstruction should equal


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched gather along dim 1: x (B, L, ...), idx (B, ...) int -> (B, ..., ...) with
    ``out[b, i...] = x[b, idx[b, i...]]``; e.g. idx (B, K) -> (B, K, C), idx (B, G, k) -> (B, G, k, C).
    ``x`` with batch 1 is broadcast over idx's batch."""
    if x.shape[0] == 1 and idx.shape[0] > 1:
        x = x.expand(idx.shape[0], *x.shape[1:])
    elif x.shape[0] != idx.shape[0]:
        raise ValueError(f"gather_tokens: batch sizes differ, x {tuple(x.shape)} vs idx {tuple(idx.shape)}")
    batch = torch.arange(idx.shape[0], device=idx.device).view(-1, *([1] * (idx.dim() - 1)))
    return x[batch, idx]
