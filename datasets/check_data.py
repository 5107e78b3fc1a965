"""Check prepared dataset folders and say precisely what is missing or malformed.

    python datasets/check_data.py [--root data] [--only shapenet|modelnet|fewshot|scanobjectnn|shapenetpart|imagenet]

Exit code 0 when every checked dataset is complete, 1 otherwise. Layouts: datasets/README.md.
Standalone on purpose (numpy and h5py only): it runs before anything else is set up.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

Problems = List[str]


def _missing(paths: List[Path], what: str) -> Problems:
    """One line per missing path."""
    return [f"missing {what}: {p}" for p in paths if not p.exists()]


def _is_pickle(path: Path) -> bool:
    """True when the file starts like a binary pickle (protocol >= 2)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _summary(bad: List[str], what: str, total: int) -> Problems:
    """'N of M <what> (first: ...)' when ``bad`` is not empty."""
    return [f"{len(bad)} of {total} {what} (first: {bad[0]})"] if bad else []


def check_shapenet(root: Path) -> Problems:
    base = root / "ShapeNet55-34"
    lists = [base / "ShapeNet-55" / "train.txt", base / "ShapeNet-55" / "test.txt"]
    problems = _missing(lists + [base / "shapenet_pc"], "ShapeNet-55 path")
    if problems:
        return problems
    for path in lists:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        print(f"  {path}: {len(names)} clouds")
        malformed = [n for n in names if "-" not in n or not n.endswith(".npy")]
        problems += _summary(malformed, f"lines of {path} not like '<taxonomy>-<model>.npy'", len(names))
        absent, bad_shape = [], []
        for name in names:
            file = base / "shapenet_pc" / name
            if not file.exists():
                absent.append(str(file))
                continue
            try:
                shape = np.load(file, mmap_mode="r").shape
            except (ValueError, OSError) as err:
                bad_shape.append(f"{file} ({err})")
                continue
            if len(shape) != 2 or shape[1] != 3 or shape[0] < 1024:
                bad_shape.append(f"{file} has shape {shape}, expected (8192, 3)")
        problems += _summary(absent, f"files listed in {path.name} are missing", len(names))
        problems += _summary(bad_shape, f"files listed in {path.name} are unreadable or misshaped", len(names))
    return problems


def check_modelnet(root: Path) -> Problems:
    base = root / "ModelNet" / "modelnet40_normal_resampled"
    lists = [base / f"modelnet40_{name}.txt" for name in ("shape_names", "train", "test")]
    problems = _missing(lists, "ModelNet40 file")
    if problems:
        return problems
    classes = [line.strip() for line in lists[0].read_text().splitlines() if line.strip()]
    if len(classes) != 40:
        problems.append(f"{lists[0]}: {len(classes)} class names, expected 40")
    for path in lists[1:]:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        print(f"  {path}: {len(ids)} shapes")
        unknown = [i for i in ids if i.rsplit("_", 1)[0] not in classes]
        problems += _summary(unknown, f"ids in {path.name} with a class not in the class list", len(ids))
        files = [base / i.rsplit("_", 1)[0] / f"{i}.txt" for i in ids]
        problems += _summary([str(f) for f in files if not f.exists()], f"files of {path.name} are missing", len(ids))
        first = next((f for f in files if f.exists()), None)
        if first is not None:
            try:
                table = np.loadtxt(first, delimiter=",", ndmin=2, max_rows=10)
                if table.shape[1] != 6 or not np.isfinite(table).all():
                    problems.append(f"{first}: expected finite rows 'x,y,z,nx,ny,nz', got {table.shape[1]} columns")
            except ValueError as err:
                problems.append(f"{first}: not comma-separated numbers ({err})")
    for split in ("train", "test"):
        dat = base / f"modelnet40_{split}_8192pts_fps.dat"
        if not dat.exists():
            print(f"  note: {dat.name} absent (optional; the txt files are read instead, more slowly)")
        elif not _is_pickle(dat):
            problems.append(f"{dat}: not a pickle file (empty or wrong header)")
    return problems


def check_fewshot(root: Path) -> Problems:
    base = root / "ModelNetFewshot"
    if not base.exists():
        return [f"missing few-shot folder: {base}"]
    problems = []
    for way in (5, 10):
        for shot in (10, 20):
            folder = next((base / name for name in (f"{way}way_{shot}shot", f"{way}way{shot}shot")
                           if (base / name).exists()), None)
            if folder is None:
                problems.append(f"missing folder {base / f'{way}way_{shot}shot'}")
                continue
            files = [folder / f"{fold}.pkl" for fold in range(10)]
            problems += _summary([str(f) for f in files if not f.exists()], f"folds of {folder} are missing", 10)
            problems += [f"{f}: not a pickle file (empty or wrong header)" for f in files
                         if f.exists() and not _is_pickle(f)]
    return problems


def check_scanobjectnn(root: Path) -> Problems:
    import h5py

    base = root / "ScanObjectNN"
    files = [base / "main_split" / f"{split}_objectdataset{suffix}.h5"
             for suffix in ("_augmentedrot_scale75", "") for split in ("training", "test")]
    files += [base / "main_split_nobg" / f"{split}_objectdataset.h5" for split in ("training", "test")]
    problems = _missing(files, "ScanObjectNN file")
    for path in (f for f in files if f.exists()):
        try:
            with h5py.File(path, "r") as h5:
                if "data" not in h5 or "label" not in h5:
                    problems.append(f"{path}: needs h5 datasets 'data' and 'label', found {sorted(h5.keys())}")
                    continue
                data, label = np.asarray(h5["data"]), np.asarray(h5["label"]).reshape(-1)
        except OSError as err:
            problems.append(f"{path}: not a readable h5 file ({err})")
            continue
        print(f"  {path}: data {data.shape}, {len(label)} labels")
        if data.ndim != 3 or data.shape[2] != 3:
            problems.append(f"{path}: 'data' has shape {data.shape}, expected (N, 2048, 3)")
        elif len(label) != len(data):
            problems.append(f"{path}: {len(data)} clouds but {len(label)} labels")
        elif not np.isfinite(data).all():
            first = int(np.argmax(~np.isfinite(data).all(axis=(1, 2))))
            problems.append(f"{path}: non-finite coordinates, first in cloud {first}")
        elif len(label) and (label.min() < 0 or label.max() > 14):
            problems.append(f"{path}: labels span {label.min()}..{label.max()}, expected 0..14")
    return problems


def check_shapenetpart(root: Path) -> Problems:
    base = root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    category_file = base / "synsetoffset2category.txt"
    lists = [base / "train_test_split" / f"shuffled_{split}_file_list.json" for split in ("train", "val", "test")]
    problems = _missing([category_file] + lists, "ShapeNetPart file")
    if problems:
        return problems
    rows = [line.split() for line in category_file.read_text().splitlines() if line.strip()]
    synsets = {fields[1] for fields in rows if len(fields) == 2}
    if len(rows) != 16 or len(synsets) != 16:
        problems.append(f"{category_file}: {len(rows)} lines / {len(synsets)} synsets, expected 16 "
                        f"'<Category> <synset>' lines")
    first_file = {}
    for path in lists:
        try:
            entries = json.loads(path.read_text())
        except ValueError as err:
            problems.append(f"{path}: not valid JSON ({err})")
            continue
        print(f"  {path}: {len(entries)} shapes")
        parts = [e.split("/") if isinstance(e, str) else [] for e in entries]
        malformed = [repr(e) for e, p in zip(entries, parts) if len(p) != 3]
        problems += _summary(malformed, f"entries of {path.name} not like 'shape_data/<synset>/<model id>'",
                             len(entries))
        listed = [p for p in parts if len(p) == 3]
        problems += _summary([f"{s}/{m}" for _, s, m in listed if s not in synsets],
                             f"entries of {path.name} with a synset not in {category_file.name}", len(entries))
        files = [base / s / f"{m}.txt" for _, s, m in listed]
        problems += _summary([str(f) for f in files if not f.exists()], f"files of {path.name} are missing",
                             len(entries))
        for (_, synset, _), file in zip(listed, files):
            if file.exists():
                first_file.setdefault(synset, file)
    for file in first_file.values():  # one file per category: 7 columns, integer labels 0..49
        try:
            table = np.loadtxt(file, ndmin=2)
        except ValueError as err:
            problems.append(f"{file}: not rows of 7 numbers 'x y z nx ny nz part' ({err})")
            continue
        if table.size == 0 or table.shape[1] != 7:
            problems.append(f"{file}: expected rows 'x y z nx ny nz part', got shape {table.shape}")
        elif not np.isfinite(table).all() or (table[:, 6] != np.round(table[:, 6])).any() \
                or table[:, 6].min() < 0 or table[:, 6].max() > 49:
            problems.append(f"{file}: expected finite values and integer part labels 0..49, "
                            f"labels span {table[:, 6].min():g}..{table[:, 6].max():g}")
    return problems


def check_imagenet(root: Path) -> Problems:
    base = root / "imagenet"
    problems = _missing([base / "train", base / "val"], "ImageNet folder")
    for split in ("train", "val"):
        folder = base / split
        if not folder.exists():
            continue
        classes = sorted(d for d in folder.iterdir() if d.is_dir())
        print(f"  {folder}: {len(classes)} class folders")
        if len(classes) != 1000:
            problems.append(f"{folder}: {len(classes)} class folders, expected 1000 (n01440764 ...)")
        empty = [str(d) for d in classes if not any(d.iterdir())]
        problems += _summary(empty, f"class folders of {folder} are empty", len(classes))
    return problems


CHECKS: Dict[str, Callable[[Path], Problems]] = {
    "shapenet": check_shapenet, "modelnet": check_modelnet, "fewshot": check_fewshot,
    "scanobjectnn": check_scanobjectnn, "imagenet": check_imagenet, "shapenetpart": check_shapenetpart,
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", type=Path, help="folder holding the datasets (default: data)")
    parser.add_argument("--only", choices=sorted(CHECKS), help="check one dataset only")
    args = parser.parse_args(argv)
    failed = []
    for name in [args.only] if args.only else list(CHECKS):
        print(f"[{name}]")
        problems = CHECKS[name](args.root)
        for problem in problems:
            print(f"  PROBLEM: {problem}")
        print(f"  {'OK' if not problems else f'{len(problems)} problem(s)'}")
        if problems:
            failed.append(name)
    if failed:
        print(f"incomplete: {', '.join(failed)} (layouts and downloads: datasets/README.md)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
