"""Random token masking and the truncated-normal mask ratio of MAP.

Masks are bool tensors (B, L), True = masked. Every row masks the same number of tokens, so the
visible and masked tokens can be gathered into dense (B, L_keep, C) and (B, L_mask, C) tensors.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def num_masked(length: int, ratio: float, rounding: str = "ceil") -> int:
    """How many of ``length`` tokens a ``ratio`` masks. MAP 2D rounds up (``ceil``); Point-MAE /
    PointMAP truncate (``int(ratio * G)``, ``floor``)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if rounding == "ceil":
        return math.ceil(length * ratio)
    if rounding == "floor":
        return int(length * ratio)
    raise ValueError(f"rounding must be 'ceil' or 'floor', got {rounding!r}")


def random_mask_of_count(batch: int, length: int, n_mask: int, generator: Optional[torch.Generator] = None,
                         device: Optional[torch.device] = None) -> torch.Tensor:
    """A uniformly random mask per row with exactly ``n_mask`` True. Returns bool (batch, length)."""
    if not 0 <= n_mask <= length:
        raise ValueError(f"cannot mask {n_mask} of {length} tokens")
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, length, generator=generator, device=gen_device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each token's noise within its row
    return (ranks < n_mask).to(device)


def truncated_normal_ratio(
    mean: float = 0.5,
    std: float = 0.25,
    low: float = 0.3,
    high: float = 0.7,
    generator: Optional[torch.Generator] = None,
) -> float:
    """One mask ratio from N(mean, std) truncated to [low, high] (MAP 2D draws one per step)."""
    x = torch.empty(1)
    torch.nn.init.trunc_normal_(x, mean, std, low, high, generator=generator)
    return float(x)


def mask_to_indices(mask: torch.Tensor, n_mask: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a mask into (keep (B, L_keep), masked (B, L_mask)) index tensors, each in token order.

    Every row must mask the same number of tokens. ``n_mask``: that number when the caller knows
    it (a mask from :func:`random_mask_of_count`); without it the mask is checked, which reads it on the host.
    """
    if n_mask is None:
        counts = mask.sum(dim=1)
        if mask.dim() != 2 or (counts != counts[0]).any():
            raise ValueError(
                f"mask must be (B, L) with the same number of masked tokens per row; got shape "
                f"{tuple(mask.shape)} and per-row counts {counts.tolist()}"
            )
        n_mask = int(counts[0])
    # a stable sort puts visible tokens (False) first, each group in token order
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
    return order[:, : mask.shape[1] - n_mask], order[:, mask.shape[1] - n_mask:]
