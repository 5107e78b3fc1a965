"""ModelNet40 / ModelNet10 (finetuning), the resampled release with normals, Mamba3D's reader."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from map_core.registry import DATASETS
from pointcloud.data.common import (DataError, PathLike, check_labels, check_points, normalize, point_order,
                                    read_label, read_pickle, read_text, require, require_points, sample)

logger = logging.getLogger(__name__)

LAYOUT = """data/ModelNet/modelnet40_normal_resampled/
  modelnet40_shape_names.txt           one class name per line
  modelnet40_train.txt, modelnet40_test.txt   one shape id per line, e.g. airplane_0001
  airplane/airplane_0001.txt ...       10000 lines 'x,y,z,nx,ny,nz'
  modelnet40_train_8192pts_fps.dat, modelnet40_test_8192pts_fps.dat   (optional, preprocessed)"""


@DATASETS.register("ModelNet")
class ModelNet(Dataset):
    """ModelNet clouds: xyz normalised to the unit sphere, point order shuffled for ``subset="train"``.

    With ``process_data`` the preprocessed pickle ``modelnet{C}_{subset}_{npoints}pts_fps.dat`` (a pair
    [list of (npoints, 6) arrays, list of (1,) labels]) is read and checked whole when present;
    otherwise, or without ``process_data``, the first ``npoints`` rows of each txt file are used
    (each file checked when read). The official configs read the 8192-point files and sample 1024
    points on the device (``fps_pool``, then ``random_subset``).
    """

    def __init__(self, data_path: PathLike = "data/ModelNet/modelnet40_normal_resampled", npoints: int = 8192,
                 subset: str = "train", num_category: int = 40, use_normals: bool = False,
                 process_data: bool = True):
        if subset not in ("train", "test"):
            raise ValueError(f"ModelNet subset must be 'train' or 'test', got '{subset}'")
        if num_category not in (10, 40):
            raise ValueError(f"ModelNet num_category must be 10 or 40, got {num_category}")
        self.root = require(data_path, "ModelNet folder", LAYOUT)
        self.npoints, self.subset, self.use_normals = npoints, subset, use_normals
        names_file = require(self.root / f"modelnet{num_category}_shape_names.txt", "ModelNet class list", LAYOUT)
        self.classes = [line.strip() for line in read_text(names_file).splitlines() if line.strip()]
        ids_file = require(self.root / f"modelnet{num_category}_{subset}.txt", "ModelNet split list", LAYOUT)
        self.shape_ids = [line.strip() for line in read_text(ids_file).splitlines() if line.strip()]
        class_index = {name: i for i, name in enumerate(self.classes)}
        self.labels = []
        for shape_id in self.shape_ids:
            class_name = shape_id.rsplit("_", 1)[0]
            if class_name not in class_index:
                raise DataError(f"{ids_file}: shape '{shape_id}' has class '{class_name}', "
                                f"which is not in {names_file}")
            self.labels.append(class_index[class_name])
        dat = self.root / f"modelnet{num_category}_{subset}_{npoints}pts_fps.dat"
        self.dat = dat if process_data and dat.exists() else None
        if self.dat is not None:
            self.points, self.labels = self._read_dat(dat)
        else:
            logger.info("ModelNet %s: %s not used, reading txt files", subset, dat.name)

    def _read_dat(self, path: Path) -> Tuple[list, list]:
        """Every cloud (>= npoints finite points, 3 or 6 channels) and label (in range) of the pickle."""
        logger.info("ModelNet %s: loading %s", self.subset, path)
        content = read_pickle(path)
        if not (isinstance(content, (list, tuple)) and len(content) == 2):
            raise DataError(f"{path}: expected a pickled pair [list of point arrays, list of labels], "
                            f"got {type(content).__name__}")
        points, labels = content
        if not all(isinstance(part, (list, tuple)) for part in content):
            raise DataError(f"{path}: expected a pickled pair [list of point arrays, list of labels], got "
                            f"[{type(points).__name__}, {type(labels).__name__}]")
        if not len(points) == len(labels) == len(self.shape_ids):
            raise DataError(f"{path}: {len(points)} clouds and {len(labels)} labels, but the split list has "
                            f"{len(self.shape_ids)} shapes")
        points = [check_points(p, f"{path}, item {i}", self.npoints) for i, p in enumerate(points)]
        labels = [read_label(label, f"{path}, label {i}") for i, label in enumerate(labels)]
        return points, check_labels(labels, len(self.classes), f"{path}, labels").tolist()

    def require_points(self, needed: int, reason: str) -> None:
        """Raise DataError when the ``npoints`` this reader returns per cloud are fewer than ``needed``."""
        require_points(np.full(len(self), self.npoints), needed,
                       lambda i: f"ModelNet {self.subset} reader (npoints={self.npoints}), item {i}", reason)

    def load(self, index: int) -> np.ndarray:
        """Cloud ``index`` as stored, checked (at least npoints finite rows): (P, 3 or 6) float32."""
        if self.dat is not None:
            return self.points[index]
        shape_id = self.shape_ids[index]
        path = require(self.root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt", "ModelNet shape file", LAYOUT)
        try:
            table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        except ValueError as err:
            raise DataError(f"{path}: expected comma-separated 'x,y,z,nx,ny,nz' rows ({err})") from err
        return check_points(table, str(path), self.npoints)

    def __len__(self) -> int:
        return len(self.shape_ids)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (points (P, 3) or (P, 6) float32, label int64); P = npoints."""
        points = self.load(index)[: self.npoints].copy()
        points[:, :3] = normalize(points[:, :3])
        if not self.use_normals:
            points = points[:, :3]
        elif points.shape[1] != 6:
            raise DataError(f"ModelNet item {index}: use_normals=True needs 6 channels, got {points.shape[1]}")
        return sample(points[point_order(len(points), shuffle=self.subset == "train")], self.labels[index])
