"""ShapeNetPart (part segmentation): 16 categories, 50 parts; the reader of Point-MAE's segmentation code.

On disk (``shapenetcore_partanno_segmentation_benchmark_v0_normal``), one text file per shape with
rows ``x y z nx ny nz part``; ``part`` is the global part label (0..49), stored as a float. Each
category owns a fixed set of labels (``SHAPENETPART_PARTS``, Airplane 0-3 ... Table 47-49).

One item: every row of the file is read and checked, xyz are centred at their mean and divided by
the largest norm (Point-MAE ``pc_normalize``, over all points of the shape), then ``npoints``
rows are drawn uniformly WITH replacement (Point-MAE ``np.random.choice(N, npoints,
replace=True)``, so shapes with fewer points repeat some). Training splits draw new rows every
time (torch's RNG, which the DataLoader seeds per worker); ``val`` / ``test`` draw the same rows
every time (a generator seeded by the item index), so evaluations are comparable across epochs
(Point-MAE draws anew at test time too). Normals are read and checked but not returned.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from map_core.errors import ConfigError
from map_core.registry import DATASETS
from pointcloud.data.common import DataError, PathLike, check_points, normalize, read_text, require

LAYOUT = """data/shapenetcore_partanno_segmentation_benchmark_v0_normal/
  synsetoffset2category.txt            one '<Category> <synset>' per line, e.g. 'Airplane 02691156'
  train_test_split/shuffled_{train,val,test}_file_list.json   lists of 'shape_data/<synset>/<model id>'
  <synset>/<model id>.txt              rows 'x y z nx ny nz part' (part: global label 0..49)"""

# category -> its global part labels (the ShapeNetPart benchmark's fixed assignment)
SHAPENETPART_PARTS: Dict[str, List[int]] = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11],
    "Chair": [12, 13, 14, 15], "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23],
    "Lamp": [24, 25, 26, 27], "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37],
    "Pistol": [38, 39, 40], "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}
SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}
EVAL_SPLITS = ("val", "test")
COLUMNS = 7  # x y z nx ny nz part


def check_category_parts(category_parts: Mapping[str, Sequence[int]]) -> Dict[str, List[int]]:
    """Validate a category -> part labels table: non-empty lists of distinct labels >= 0, no label
    shared by two categories. Returns it with plain int lists; raises ConfigError naming the entry."""
    owner: Dict[int, str] = {}
    table = {}
    for name, parts in category_parts.items():
        if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
            raise ConfigError(f"category_parts['{name}']: expected a non-empty list of part labels, got {parts!r}")
        if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts) \
                or len(set(parts)) != len(parts):
            raise ConfigError(f"category_parts['{name}']: expected distinct integer labels >= 0, got {list(parts)}")
        labels = list(parts)
        for p in labels:
            if p in owner:
                raise ConfigError(f"category_parts: part {p} belongs to both '{owner[p]}' and '{name}'")
            owner[p] = name
        table[name] = labels
    return table


def read_categories(path: Path) -> List[Tuple[str, str]]:
    """(category name, synset folder) per non-empty line of ``synsetoffset2category.txt``, in file order."""
    categories = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}, line {number}: expected '<Category> <synset>', got '{line.strip()}'")
        categories.append((fields[0], fields[1]))
    if not categories:
        raise DataError(f"{path}: no categories (expected lines '<Category> <synset>')")
    return categories


def read_split(path: Path) -> List[Tuple[str, str]]:
    """(synset, model id) per entry 'shape_data/<synset>/<model id>' of a split list."""
    try:
        entries = json.loads(read_text(path))
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of 'shape_data/<synset>/<model id>', "
                        f"got {type(entries).__name__}")
    shapes = []
    for index, entry in enumerate(entries):
        parts = entry.split("/") if isinstance(entry, str) else []
        if len(parts) != 3 or not all(parts):
            raise DataError(f"{path}, entry {index}: expected 'shape_data/<synset>/<model id>', got {entry!r}")
        shapes.append((parts[1], parts[2]))
    return shapes


def read_shape(path: Path, parts: Sequence[int], category: str) -> Tuple[np.ndarray, np.ndarray]:
    """One shape file -> (xyz (P, 3) float32, part labels (P,) int64), every row checked.

    Raises DataError naming the file (and the row) for an empty file, a row without 7 numbers,
    non-finite values, or a part label that is not an integer among ``parts`` of ``category``.
    """
    try:
        with warnings.catch_warnings():  # an empty file is reported below, as a DataError
            warnings.filterwarnings("ignore", "loadtxt: input contained no data")
            table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataError(f"{path}: expected rows of {COLUMNS} numbers 'x y z nx ny nz part' ({err})") from None
    if table.size == 0:
        raise DataError(f"{path}: empty file, expected rows 'x y z nx ny nz part'")
    if table.shape[1] != COLUMNS:
        raise DataError(f"{path}: expected {COLUMNS} columns 'x y z nx ny nz part', found {table.shape[1]}")
    points = check_points(table[:, :6], str(path), 1, channels=(6,))
    labels = table[:, 6]
    bad = ~np.isin(labels, np.asarray(parts, dtype=np.float64))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{path}, row {row + 1}: part label {labels[row]:g} is not one of {category}'s parts "
                        f"{list(parts)} ({int(bad.sum())} bad rows)")
    return points[:, :3], labels.astype(np.int64)


@DATASETS.register("ShapeNetPart")
class ShapeNetPart(Dataset):
    """ShapeNetPart shapes: (points (npoints, 3) float32, category int64, part labels (npoints,) int64).

    split: train | val | test | trainval (train + val, Point-MAE's training set). Categories are
    numbered in the order of ``synsetoffset2category.txt``; shapes are ordered by category, then
    model id. ``category_parts`` (category name -> global part labels) defaults to
    ``SHAPENETPART_PARTS``; other data in this layout (the demo digits) pass their own.
    ``self.category_parts`` lists the part labels of each category index.
    """

    def __init__(self, root: PathLike = "data/shapenetcore_partanno_segmentation_benchmark_v0_normal",
                 split: str = "trainval", npoints: int = 2048,
                 category_parts: Optional[Mapping[str, Sequence[int]]] = None):
        if split not in SPLITS:
            raise ConfigError(f"ShapeNetPart split must be one of {', '.join(SPLITS)}, got '{split}'")
        self.root = require(root, "ShapeNetPart folder", LAYOUT)
        self.split, self.npoints = split, npoints
        table = check_category_parts(SHAPENETPART_PARTS if category_parts is None else category_parts)
        category_file = require(self.root / "synsetoffset2category.txt", "ShapeNetPart category list", LAYOUT)
        categories = read_categories(category_file)
        unknown = [name for name, _ in categories if name not in table]
        if unknown:
            raise DataError(f"{category_file}: categories {unknown} have no part labels in category_parts "
                            f"(known: {', '.join(table)})")
        self.categories = [name for name, _ in categories]
        self.category_parts = [table[name] for name in self.categories]
        index = {synset: i for i, (_, synset) in enumerate(categories)}
        shapes = []
        for part in SPLITS[split]:
            path = require(self.root / "train_test_split" / f"shuffled_{part}_file_list.json",
                           "ShapeNetPart split list", LAYOUT)
            for number, (synset, model) in enumerate(read_split(path)):
                if synset not in index:
                    raise DataError(f"{path}, entry {number}: synset '{synset}' is not in {category_file}")
                shapes.append((index[synset], model))
        self.shapes = sorted(set(shapes))
        self.files = [self.root / categories[c][1] / f"{model}.txt" for c, model in self.shapes]
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise DataError(f"ShapeNetPart {split}: {len(missing)} of {len(self.files)} listed shape files are "
                            f"missing (first: {missing[0]})\nExpected layout:\n{LAYOUT}")

    def __len__(self) -> int:
        return len(self.shapes)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """The checked file of shape ``index``: (xyz (P, 3), part labels (P,)); a DataError names it."""
        category = self.shapes[index][0]
        return read_shape(self.files[index], self.category_parts[category], self.categories[category])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (points (npoints, 3) float32, category int64 scalar, part labels (npoints,) int64)."""
        category = self.shapes[index][0]
        xyz, labels = self.load(index)
        xyz = normalize(xyz)
        generator = torch.Generator().manual_seed(index) if self.split in EVAL_SPLITS else None
        choice = torch.randint(len(xyz), (self.npoints,), generator=generator).numpy()
        return (torch.from_numpy(np.ascontiguousarray(xyz[choice], dtype=np.float32)),
                torch.tensor(category, dtype=torch.long), torch.from_numpy(labels[choice]))
