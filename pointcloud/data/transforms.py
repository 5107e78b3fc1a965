"""Batch-level point-cloud transforms, run on the device after the DataLoader (Mamba3D runners).

Every function takes ``points: (B, N, C)`` with xyz in the first three channels (normals, when
present, in channels 3:6), returns a new tensor, and draws its randomness from ``generator`` (or
torch's global RNG when None). Voting: compute ``fps_pool`` once per test batch, then call
``random_subset`` and the augmentation once per view.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from map_core.tokens import gather_tokens
from pointcloud.ops import fps

# npoints -> size of the FPS pool the random subset is drawn from (Mamba3D runner_finetune)
FPS_POOL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}


def _uniform(shape: Tuple[int, ...], low: float, high: float, generator: Optional[torch.Generator],
             device: torch.device) -> torch.Tensor:
    """U[low, high) samples drawn on the generator's device, returned on ``device`` (float32)."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device)
    return (low + (high - low) * u).to(device)


def scale_and_translate(points: torch.Tensor, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0,
                        translate_range: float = 0.2, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """xyz * s + t with s ~ U[scale_low, scale_high] and t ~ U[-range, range], per sample and per axis.

    points: (B, N, C) -> (B, N, C); channels past xyz are left unchanged (PointcloudScaleAndTranslate).
    """
    return _scale_shift(points, (points.shape[0], 1, 3), scale_low, scale_high, translate_range, generator)


def _scale_shift(points: torch.Tensor, scale_shape: tuple, scale_low: float, scale_high: float,
                 shift_range: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """xyz * s + t, s ~ U[scale_low, scale_high] of ``scale_shape``, t ~ U[-range, range] per sample and axis."""
    scale = _uniform(scale_shape, scale_low, scale_high, generator, points.device).to(points.dtype)
    shift = _uniform((points.shape[0], 1, 3), -shift_range, shift_range, generator, points.device).to(points.dtype)
    out = points.clone()
    out[..., :3] = points[..., :3] * scale + shift
    return out


def isotropic_scale_and_shift(points: torch.Tensor, scale_low: float = 0.8, scale_high: float = 1.25,
                              shift_range: float = 0.1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """xyz * s + t with ONE s ~ U[scale_low, scale_high] per sample and t ~ U[-range, range] per
    sample and axis (Point-MAE segmentation: ``random_scale_point_cloud`` then ``shift_point_cloud``).

    points: (B, N, C) -> (B, N, C); channels past xyz are left unchanged.
    """
    return _scale_shift(points, (points.shape[0], 1, 1), scale_low, scale_high, shift_range, generator)


def rotate_about_up(points: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Rotate each sample about the y axis by an angle ~ U[0, 2*pi) (PointcloudRotate).

    Row vectors are multiplied on the right by R = [[c, 0, s], [0, 1, 0], [-s, 0, c]].
    points: (B, N, C) -> (B, N, C); normals (channels 3:6) are rotated too.
    """
    angle = _uniform((points.shape[0],), 0.0, 2 * math.pi, generator, points.device)
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rot = torch.stack([c, zero, s, zero, one, zero, -s, zero, c], dim=-1).view(-1, 3, 3).to(points.dtype)
    out = points.clone()
    out[..., :3] = points[..., :3] @ rot
    if points.shape[-1] >= 6:
        out[..., 3:6] = points[..., 3:6] @ rot
    return out


def fps_points(points: torch.Tensor, npoints: int) -> torch.Tensor:
    """The ``npoints`` FPS points of each cloud, in FPS order (official ``misc.fps``).

    points: (B, N, C) -> (B, npoints, C), sampled on xyz. With ``npoints == N`` the cloud is
    returned unchanged: FPS would only reorder it, keeping point 0 first, so a tokeniser's own FPS
    picks the same centres and a random subset drawn next is as random.
    """
    if npoints == points.shape[1]:
        return points
    return gather_tokens(points, fps(points[..., :3].contiguous(), npoints))


def fps_pool(points: torch.Tensor, npoints: int, pool: Optional[int] = None) -> torch.Tensor:
    """The farthest ``pool`` points of each cloud (``pool`` from FPS_POOL by default, capped at N).

    points: (B, N, C) -> (B, min(pool, N), C) by :func:`fps_points`.
    """
    if pool is None:
        if npoints not in FPS_POOL:
            raise ValueError(f"no default FPS pool for npoints={npoints} (known: {sorted(FPS_POOL)}); pass pool")
        pool = FPS_POOL[npoints]
    pool = min(pool, points.shape[1])
    if npoints > pool:
        raise ValueError(f"cannot take {npoints} points from an FPS pool of {pool} (clouds have "
                         f"{points.shape[1]} points)")
    return fps_points(points, pool)


def random_subset(points: torch.Tensor, npoints: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``npoints`` distinct points in random order, the same indices for the whole batch (as the runner).

    points: (B, N, C) -> (B, npoints, C).
    """
    gen_device = generator.device if generator is not None else points.device
    idx = torch.randperm(points.shape[1], generator=generator, device=gen_device)[:npoints].to(points.device)
    return points[:, idx]
