"""ShapeNet-55 (pretraining): 8192-point clouds listed per split, Point-MAE's reader."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from map_core.registry import DATASETS
from pointcloud.data.common import (DataError, PathLike, check_points, normalize, point_order, read_text,
                                    require, require_points, sample)

LAYOUT = """data/ShapeNet55-34/
  ShapeNet-55/train.txt, test.txt      one '<taxonomy>-<model>.npy' per line
  shapenet_pc/<taxonomy>-<model>.npy   (8192, 3) float"""


def read_list(path: Path) -> List[str]:
    """Names in a ShapeNet list file, each checked to read '<taxonomy>-<model>.npy'."""
    names = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if "-" not in name or not name.endswith(".npy"):
            raise DataError(f"{path}, line {number}: expected '<taxonomy>-<model>.npy', got '{name}'")
        names.append(name)
    return names


@DATASETS.register("ShapeNet")
class ShapeNet(Dataset):
    """ShapeNet-55 clouds: a random subset of ``npoints`` points, normalised to the unit sphere.

    ``whole=True`` reads the test list followed by the ``subset`` list (Point-MAE's option).
    Label = index of the taxonomy id among the sorted ids of train.txt and test.txt. The list files
    are checked when the reader is built, each cloud file when it is read (``load``).
    """

    def __init__(self, data_path: PathLike = "data/ShapeNet55-34/ShapeNet-55",
                 pc_path: PathLike = "data/ShapeNet55-34/shapenet_pc", subset: str = "train",
                 npoints: int = 1024, whole: bool = False):
        self.pc_path = require(pc_path, "ShapeNet point folder", LAYOUT)
        data_path = Path(data_path)
        splits = (["test"] if whole else []) + [subset]
        self.names = [n for split in splits for n in read_list(require(data_path / f"{split}.txt",
                                                                          "ShapeNet list", LAYOUT))]
        taxonomies = {n.split("-")[0] for n in self.names}
        for split in ("train", "test"):
            if (data_path / f"{split}.txt").exists():
                taxonomies |= {n.split("-")[0] for n in read_list(data_path / f"{split}.txt")}
        self.classes = sorted(taxonomies)
        self.labels = [self.classes.index(n.split("-")[0]) for n in self.names]
        self.npoints = npoints

    def __len__(self) -> int:
        return len(self.names)

    def require_points(self, needed: int, reason: str) -> None:
        """Raise DataError when the ``npoints`` this reader returns per cloud are fewer than ``needed``."""
        require_points(np.full(len(self), self.npoints), needed,
                       lambda i: f"ShapeNet reader (npoints={self.npoints}), item {i}", reason)

    def load(self, index: int) -> np.ndarray:
        """Cloud ``index`` as stored, checked (readable, (P, 3), P >= npoints, finite): float32."""
        path = require(self.pc_path / self.names[index], "ShapeNet point file", LAYOUT)
        try:
            points = np.load(path)
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f"{path}: not a readable .npy file (empty or truncated?): {err}") from None
        return check_points(points, str(path), self.npoints, channels=(3,))

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (points (npoints, 3) float32, label int64)."""
        points = self.load(index)
        points = points[point_order(len(points), shuffle=True)[: self.npoints]]
        return sample(normalize(points), self.labels[index])
