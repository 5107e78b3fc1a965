"""What the point-cloud readers share: the user-facing error, file reading, checks, sample format.

Every reader validates what it loads with these checks and raises :class:`DataError` naming the
file (and the sample index); ``datasets/check_data.py`` runs the readers, so it accepts exactly
what training accepts.
"""
from __future__ import annotations

import os
import pickle
import reprlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from map_core.errors import DataError
from map_core.safe_pickle import restricted_load

PathLike = Union[str, Path]

def require(path: PathLike, what: str, layout: str) -> Path:
    """Return ``path`` if it exists, else raise a DataError showing the expected ``layout`` (or, for a
    symlink that leads nowhere, saying so)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DataError(f"{what} {path} is a symlink that leads nowhere (a loop of links, or a missing target "
                        f"'{os.readlink(path)}')")
    if not path.exists():
        raise DataError(f"{what} not found: {path}\nExpected layout:\n{layout}\n"
                        f"See datasets/README.md for downloads; run `python datasets/check_data.py`.")
    return path


def read_text(path: Path) -> str:
    """The UTF-8 text of a list or names file; a DataError names the file and the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                        f"list and names files hold one plain name per line") from None


def read_pickle(path: Path) -> Any:
    """A third-party data pickle, loaded with the restricted unpickler (Python 2 pickles included).

    Raises DataError naming the file when it is empty, truncated, not a pickle, asks for code, or
    asks to build more than its size allows (``map_core.safe_pickle``).
    """
    try:
        return restricted_load(path, encoding="latin1")
    except pickle.UnpicklingError as err:
        reason = str(err).replace(f"{path}: ", "")
        raise DataError(f"{path}: cannot be read as a data pickle (empty, truncated or not plain data: "
                        f"{reason})") from None


def read_label(value: Any, source: str) -> int:
    """One sample's label as stored (an int, or an array of one number): the int; else a DataError
    naming ``source`` (an empty label, several numbers, text, a fraction, NaN)."""
    values = np.asarray(value).reshape(-1)
    if values.size != 1 or values.dtype.kind not in "biuf" or not float(values[0]).is_integer():
        raise DataError(f"{source}: expected one whole-number label, got {reprlib.repr(value)}")
    return int(values[0])


def check_labels(labels: Sequence[int], num_classes: int, source: str) -> np.ndarray:
    """Labels as an int64 array, each a whole number in ``[0, num_classes)``; else a DataError naming
    the first bad index (a fraction or NaN is never truncated)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected integer labels, got values of type {labels.dtype}")
    fractional = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels))) if labels.dtype.kind == "f" else []
    if len(fractional):
        i = int(fractional[0])
        raise DataError(f"{source}: label {labels[i]:g} at index {i} is not a whole number "
                        f"({len(fractional)} such labels)")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{source}: label {labels[i]} at index {i} is outside [0, {num_classes}) "
                        f"({len(bad)} bad labels; set the reader's class count if the data has more classes)")
    return labels


def require_points(counts: Sequence[int], needed: int, where: Callable[[int], str], reason: str) -> None:
    """Raise DataError at the first cloud whose point count in ``counts`` is below ``needed``.

    ``where(i)`` names cloud i (file and index); ``reason`` says who needs the points.
    """
    counts = np.asarray(counts)
    short = np.flatnonzero(counts < needed)
    if len(short):
        i = int(short[0])
        raise DataError(f"{where(i)}: {int(counts[i])} points, fewer than the {needed} {reason} "
                        f"({len(short)} of {len(counts)} clouds are too small)")


def check_points(points: np.ndarray, source: str, min_points: int, channels: Tuple[int, ...] = (3, 6)) -> np.ndarray:
    """Validate one cloud: shape (P, C) with C in ``channels``, P >= ``min_points``, finite values.

    points: (P, C) -> the same array as float32.
    """
    points = np.asarray(points)
    if points.dtype.kind not in "iuf":
        raise DataError(f"{source}: expected numeric coordinates, got values of type {points.dtype}")
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
