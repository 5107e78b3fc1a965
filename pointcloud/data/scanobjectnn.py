"""ScanObjectNN (finetuning): real scans, 2048 points per object, 15 classes; Point-MAE / Mamba3D reader."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from map_core.registry import DATASETS
from pointcloud.data.common import (DataError, PathLike, check_labels, point_order, require,
                                    require_points, sample)

logger = logging.getLogger(__name__)

LAYOUT = """data/ScanObjectNN/
  main_split/training_objectdataset_augmentedrot_scale75.h5, test_objectdataset_augmentedrot_scale75.h5  (hardest)
  main_split/training_objectdataset.h5, test_objectdataset.h5                                              (objbg)
  main_split_nobg/training_objectdataset.h5, test_objectdataset.h5                                         (objonly)
  each with datasets 'data' (N, 2048, 3) and 'label' (N,)"""

# variant -> (folder, file suffix)
VARIANTS = {"hardest": ("main_split", "_augmentedrot_scale75"), "objbg": ("main_split", ""),
            "objonly": ("main_split_nobg", "")}


def h5_path(variant: str, subset: str) -> str:
    """Relative path of a variant's split file, e.g. 'main_split/test_objectdataset.h5'."""
    if variant not in VARIANTS:
        raise ValueError(f"ScanObjectNN variant must be one of {sorted(VARIANTS)}, got '{variant}'")
    if subset not in ("train", "test"):
        raise ValueError(f"ScanObjectNN subset must be 'train' or 'test', got '{subset}'")
    folder, suffix = VARIANTS[variant]
    return f"{folder}/{'training' if subset == 'train' else 'test'}_objectdataset{suffix}.h5"


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` entries of each label, in their original order."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    return np.flatnonzero(rank < n)


def read_h5(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(points (N, P, 3) float32, labels (N,) as stored) of a ScanObjectNN file, shapes and
    coordinates checked (the labels by :func:`check_labels`).

    Raises DataError naming the file when it is unreadable (empty, truncated, not HDF5), lacks the
    'data' / 'label' datasets (or holds groups there), has the wrong shapes, or holds NaN / inf
    coordinates.
    """
    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in ("data", "label") if key not in f]
            if missing:
                raise DataError(f"{path}: missing h5 dataset(s) {missing}; found keys {sorted(f.keys())}")
            groups = [key for key in ("data", "label") if not isinstance(f[key], h5py.Dataset)]
            if groups:
                raise DataError(f"{path}: '{groups[0]}' is an h5 {type(f[groups[0]]).__name__.lower()}, "
                                f"expected a dataset (an array)")
            if f["data"].dtype.kind not in "iuf":
                raise DataError(f"{path}: 'data' holds values of type {f['data'].dtype}, expected numbers")
            points = np.asarray(f["data"], dtype=np.float32)
            labels = np.asarray(f["label"]).reshape(-1)
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file (empty or truncated?): {err}") from None
    if points.ndim != 3 or points.shape[2] != 3:
        raise DataError(f"{path}: 'data' should have shape (N, P, 3), got {points.shape}")
    if len(labels) != len(points):
        raise DataError(f"{path}: {len(points)} clouds in 'data' but {len(labels)} entries in 'label'")
    bad = ~np.isfinite(points).all(axis=(1, 2))
    if bad.any():
        first = int(np.argmax(bad))
        point = int(np.argmax(~np.isfinite(points[first]).all(axis=1)))
        raise DataError(f"{path}: non-finite coordinates (NaN or inf) in cloud {first}, point {point} "
                        f"({int(bad.sum())} bad clouds)")
    return points, labels


@DATASETS.register("ScanObjectNN")
class ScanObjectNN(Dataset):
    """All 2048 points of each object, not normalised (as the official reader), order shuffled in training.

    The whole file is read and checked when the reader is built (shapes, finite values, labels in
    ``[0, num_classes)``; 15 classes in the official files). ``max_per_class`` keeps only the first
    N clouds of each class (in file order), for runs with few labels.
    """

    def __init__(self, root: PathLike = "data/ScanObjectNN", variant: str = "hardest", subset: str = "train",
                 max_per_class: Optional[int] = None, num_classes: int = 15):
        self.path = require(f"{root}/{h5_path(variant, subset)}", f"ScanObjectNN {variant} {subset} file", LAYOUT)
        points, labels = read_h5(self.path)
        labels = check_labels(labels, num_classes, f"{self.path}, 'label'")
        if max_per_class is not None:
            keep = first_per_class(labels, max_per_class)
            points, labels = points[keep], labels[keep]
        self.points, self.labels, self.subset, self.num_classes = points, labels, subset, num_classes
        logger.info("ScanObjectNN %s %s: %s clouds of %d points", variant, subset, len(points), points.shape[1])

    def require_points(self, needed: int, reason: str) -> None:
        """Raise DataError unless every cloud has at least ``needed`` points."""
        require_points(np.full(len(self.points), self.points.shape[1]), needed,
                       lambda i: f"{self.path}, cloud {i}", reason)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (points (P, 3) float32, label int64); P = 2048 for the official files."""
        order = point_order(self.points.shape[1], shuffle=self.subset == "train")
        return sample(self.points[index][order], self.labels[index])
