"""ModelNet40 few-shot splits (Point-BERT protocol), read like Point-MAE / Mamba3D."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset

from map_core.registry import DATASETS
from map_core.safe_pickle import restricted_load
from pointcloud.data.common import DataError, PathLike, check_points, normalize, point_order, require, sample

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

    ``npoints=None`` keeps every point of the stored clouds, as the official reader does (the task
    samples on the device); an integer keeps the first ``npoints`` after the shuffle.
    """

    def __init__(self, data_path: PathLike = "data/ModelNetFewshot", way: int = 5, shot: int = 10, fold: int = 0,
                 subset: str = "train", npoints: Optional[int] = None, use_normals: bool = False):
        self.path = split_file(require(data_path, "few-shot folder", LAYOUT), way, shot, fold)
        content = restricted_load(self.path, encoding="latin1")
        if not isinstance(content, dict) or subset not in content:
            found = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise DataError(f"{self.path}: expected a dict with key '{subset}', found {found}")
        self.items = content[subset]
        for i, item in enumerate(self.items):
            if not isinstance(item, (list, tuple)) or len(item) < 2:
                raise DataError(f"{self.path}, '{subset}' item {i}: expected (points, label, ...), "
                                f"got {type(item).__name__}")
        self.subset, self.npoints, self.use_normals = subset, npoints, use_normals
        logger.info("few-shot %s: %d clouds from %s", subset, len(self.items), self.path)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (points (npoints or P, 3 or 6) float32, label int64)."""
        points, label = self.items[index][0], self.items[index][1]
        points = check_points(points, f"{self.path}, '{self.subset}' item {index}", self.npoints or 1).copy()
        points[:, :3] = normalize(points[:, :3])
        if not self.use_normals:
            points = points[:, :3]
        elif points.shape[1] != 6:
            raise DataError(f"{self.path}, item {index}: use_normals=True needs 6 channels, got {points.shape[1]}")
        order = point_order(len(points), shuffle=self.subset == "train")
        return sample(points[order], int(label), self.npoints)
