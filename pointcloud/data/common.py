"""What the point-cloud readers share: the user-facing error, normalisation, checks, sample format."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from map_core.errors import UserError

PathLike = Union[str, Path]


class DataError(UserError, ValueError):
    """A dataset on disk is missing or malformed; the message names the file and the problem."""


def require(path: PathLike, what: str, layout: str) -> Path:
    """Return ``path`` if it exists, else raise a DataError showing the expected ``layout``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}\nExpected layout:\n{layout}\n"
                        f"See datasets/README.md for downloads; run `python datasets/check_data.py`.")
    return path


def check_points(points: np.ndarray, source: str, min_points: int, channels: Tuple[int, ...] = (3, 6)) -> np.ndarray:
    """Validate one cloud: shape (P, C) with C in ``channels``, P >= ``min_points``, finite values.

    points: (P, C) -> the same array as float32.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] not in channels:
        raise DataError(f"{source}: expected points of shape (P, {' or '.join(map(str, channels))}), "
                        f"got {points.shape}")
    if points.shape[0] < min_points:
        raise DataError(f"{source}: has {points.shape[0]} points, fewer than the {min_points} asked for")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise DataError(f"{source}: non-finite coordinates (NaN or inf) at point index {int(np.argmax(bad))} "
                        f"({int(bad.sum())} bad points)")
    return points.astype(np.float32, copy=False)


def normalize(xyz: np.ndarray) -> np.ndarray:
    """Centre at the mean and divide by the largest norm (Point-MAE ``pc_norm``). xyz: (P, 3) -> (P, 3)."""
    xyz = xyz - xyz.mean(axis=0)
    scale = np.sqrt((xyz ** 2).sum(axis=1)).max()
    return xyz / scale if scale > 0 else xyz


def point_order(num_points: int, shuffle: bool) -> np.ndarray:
    """A random permutation (torch's RNG, which DataLoader seeds per worker) or the identity."""
    return torch.randperm(num_points).numpy() if shuffle else np.arange(num_points)


def sample(points: np.ndarray, label: int, npoints: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(points (npoints or P, C) float32 tensor, label int64 scalar tensor)."""
    points = np.ascontiguousarray(points[:npoints], dtype=np.float32)
    return torch.from_numpy(points), torch.tensor(int(label), dtype=torch.long)
