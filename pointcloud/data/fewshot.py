"""ModelNet40 few-shot splits (Point-BERT protocol), read like Point-MAE / Mamba3D."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset

from map_core.registry import DATASETS
from pointcloud.data.common import (DataError, PathLike, check_labels, check_points, normalize, point_order,
                                    read_label, read_pickle, require, require_points, sample)

logger = logging.getLogger(__name__)

LAYOUT = """data/ModelNetFewshot/
  5way_10shot/0.pkl ... 9.pkl          (also 5way_20shot, 10way_10shot, 10way_20shot)
  each a pickled dict {'train': [(points (P, 3 or 6), label, ...), ...], 'test': [...]}
  (folders named '5way10shot' are accepted too)"""


def split_file(root: Path, way: int, shot: int, fold: int) -> Path:
    """The fold's pickle: the official '{way}way_{shot}shot' folder, else '{way}way{shot}shot'."""
    for folder in (f"{way}way_{shot}shot", f"{way}way{shot}shot"):
        if (root / folder / f"{fold}.pkl").exists():
            return root / folder / f"{fold}.pkl"
    return require(root / f"{way}way_{shot}shot" / f"{fold}.pkl", "few-shot split", LAYOUT)


@DATASETS.register("ModelNetFewShot")
class ModelNetFewShot(Dataset):
    """One fold of an N-way K-shot split: xyz normalised, point order shuffled for ``subset="train"``.

    The fold is read and checked when the reader is built: every item a (points, label, ...)
    tuple, points finite with 3 or 6 channels (and at least ``npoints``), labels in ``[0, way)``.
    ``npoints=None`` keeps every point of the stored clouds, as the official reader does (the task
    samples on the device); an integer keeps the first ``npoints`` after the shuffle.
    """

    def __init__(self, data_path: PathLike = "data/ModelNetFewshot", way: int = 5, shot: int = 10, fold: int = 0,
                 subset: str = "train", npoints: Optional[int] = None, use_normals: bool = False):
        self.path = split_file(require(data_path, "few-shot folder", LAYOUT), way, shot, fold)
        content = read_pickle(self.path)
        if not isinstance(content, dict) or subset not in content:
            found = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise DataError(f"{self.path}: expected a dict with key '{subset}', found {found}")
        self.subset, self.npoints, self.use_normals = subset, npoints, use_normals
        self.points, labels = [], []
        for i, item in enumerate(content[subset]):
            if not isinstance(item, (list, tuple)) or len(item) < 2:
                raise DataError(f"{self._where(i)}: expected (points, label, ...), got {type(item).__name__}")
            self.points.append(check_points(item[0], self._where(i), npoints or 1))
            labels.append(read_label(item[1], f"{self._where(i)}, label"))
        self.labels = check_labels(labels, way, f"{self.path}, '{subset}' labels")
        logger.info("few-shot %s: %d clouds from %s", subset, len(self.points), self.path)

    def _where(self, index: int) -> str:
        return f"{self.path}, '{self.subset}' item {index}"

    def require_points(self, needed: int, reason: str) -> None:
        """Raise DataError at the first cloud that gives fewer than ``needed`` points."""
        counts = [self.npoints or len(p) for p in self.points]
        require_points(counts, needed, self._where, reason)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (points (npoints or P, 3 or 6) float32, label int64)."""
        points = self.points[index].copy()
        points[:, :3] = normalize(points[:, :3])
        if not self.use_normals:
            points = points[:, :3]
        elif points.shape[1] != 6:
            raise DataError(f"{self._where(index)}: use_normals=True needs 6 channels, got {points.shape[1]}")
        order = point_order(len(points), shuffle=self.subset == "train")
        return sample(points[order], self.labels[index], self.npoints)
