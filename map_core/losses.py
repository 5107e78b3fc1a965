"""Reconstruction losses: norm-pix MSE for image patches, Chamfer distance for point patches."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise each patch by its own mean and (unbiased, as MAE) variance. target: (..., P)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None, norm_pix: bool = True
) -> torch.Tensor:
    """Mean over masked tokens of the per-token MSE. pred, target: (B, L, P); mask: bool (B, L),
    or None when pred and target already hold only the masked tokens (the pretrainer's loss_fn)."""
    if norm_pix:
        target = normalize_patches(target.float())
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def nearest_sq_dist(
    x: torch.Tensor, y: torch.Tensor, max_elems: int = 2**26
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Squared distance from each point to its nearest neighbour in the other set.

    x: (B, N, D), y: (B, M, D) -> (d1 (B, N), d2 (B, M)). Computed exactly as sums of squared
    differences, in chunks of x so no more than ``max_elems`` differences exist at once.
    """
    b, n, d = x.shape
    m = y.shape[1]
    chunk = max(1, max_elems // max(1, b * m * d))
    d1, d2 = [], None
    for start in range(0, n, chunk):
        dist = (x[:, start:start + chunk, None, :] - y[:, None, :, :]).pow(2).sum(-1)  # (B, c, M)
        d1.append(dist.min(dim=2).values)
        col = dist.min(dim=1).values
        d2 = col if d2 is None else torch.minimum(d2, col)
    return torch.cat(d1, dim=1), d2


def chamfer_distance(
    x: torch.Tensor, y: torch.Tensor, norm: int = 2, max_elems: Optional[int] = None
) -> torch.Tensor:
    """Point-MAE's Chamfer distances between point sets x: (B, N, D) and y: (B, M, D).

    ``norm=2`` (cdl2): mean(d1) + mean(d2) of squared nearest distances.
    ``norm=1`` (cdl1): (mean(sqrt(d1)) + mean(sqrt(d2))) / 2; the square root is taken of
    max(d, 1e-12) so that coincident points keep a finite gradient.
    """
    d1, d2 = nearest_sq_dist(x.float(), y.float(), **({"max_elems": max_elems} if max_elems else {}))
    if norm == 2:
        return d1.mean() + d2.mean()
    if norm == 1:
        return (d1.clamp_min(1e-12).sqrt().mean() + d2.clamp_min(1e-12).sqrt().mean()) / 2
    raise ValueError(f"chamfer norm must be 1 or 2, got {norm}")
