"""Generate ModelNet40 few-shot splits in the Point-BERT protocol.

    python datasets/make_fewshot_splits.py [--modelnet data/ModelNet/modelnet40_normal_resampled]
                                           [--out data/ModelNetFewshot] [--seed 0]

For each N-way K-shot setting and fold: draw N classes, K training clouds per class from the train
split and 20 unseen test clouds per class from the test split. Writes
``{out}/{way}way_{shot}shot/{fold}.pkl`` = {"train": [...], "test": [...]}, items
(points (npoints, 6) float32 x,y,z,nx,ny,nz, label in 0..N-1, ModelNet40 class index).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


def read_split(root: Path, split: str, classes: List[str]) -> Dict[int, List[str]]:
    """class index -> shape ids of that class in ``modelnet40_{split}.txt``."""
    by_class: Dict[int, List[str]] = {i: [] for i in range(len(classes))}
    for line in (root / f"modelnet40_{split}.txt").read_text().split():
        by_class[classes.index(line.rsplit("_", 1)[0])].append(line)
    return by_class


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modelnet", type=Path, default=Path("data/ModelNet/modelnet40_normal_resampled"))
    parser.add_argument("--out", type=Path, default=Path("data/ModelNetFewshot"))
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--query", type=int, default=20, help="test clouds per class")
    parser.add_argument("--npoints", type=int, default=8192, help="first rows kept of each txt file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    classes = (args.modelnet / "modelnet40_shape_names.txt").read_text().split()
    splits = {s: read_split(args.modelnet, s, classes) for s in ("train", "test")}
    cache: Dict[str, np.ndarray] = {}

    def load(shape_id: str) -> np.ndarray:
        if shape_id not in cache:
            path = args.modelnet / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt"
            cache[shape_id] = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)[: args.npoints]
        return cache[shape_id]

    rng = np.random.default_rng(args.seed)
    for way in args.ways:
        for shot in args.shots:
            folder = args.out / f"{way}way_{shot}shot"
            folder.mkdir(parents=True, exist_ok=True)
            for fold in range(args.folds):
                chosen = rng.choice(len(classes), way, replace=False)
                fold_data = {"train": [], "test": []}
                for label, cls in enumerate(chosen):
                    for split, count in (("train", shot), ("test", args.query)):
                        ids = splits[split][int(cls)]
                        if len(ids) < count:
                            print(f"class {classes[cls]} has {len(ids)} {split} shapes, need {count}")
                            return 1
                        for i in rng.choice(len(ids), count, replace=False):
                            fold_data[split].append((load(ids[i]), label, int(cls)))
                with open(folder / f"{fold}.pkl", "wb") as f:
                    pickle.dump(fold_data, f)
            print(f"wrote {folder} ({args.folds} folds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
