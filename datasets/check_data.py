"""Check prepared dataset folders and say precisely what is missing or malformed.

    python datasets/check_data.py [--root data] [--only shapenet|modelnet|fewshot|scanobjectnn|shapenetpart|imagenet]

Each dataset is opened with the reader training uses, with the settings of the repository's
configs (``SETTINGS``), and every point cloud is read and checked as training checks it (readable
file, shape, enough points for the task, finite values, labels in range), so this passes exactly
the point-cloud data training accepts. ImageNet: the folder layout (training skips single
unreadable images with a warning, so they are not opened here). Layouts: datasets/README.md.
Exit code 0 when every checked dataset is complete, 1 when a problem was found, 2 for an error
that stopped the check itself (``--debug`` shows its traceback).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

try:
    from image.data import ImageNet
    from map_core.engine.console import add_debug_flag, report_error
    from map_core.errors import DataError, UserError
    from pointcloud.data import ModelNet, ModelNetFewShot, ScanObjectNN, ShapeNet, ShapeNetPart
    from pointcloud.data.scanobjectnn import VARIANTS
except ModuleNotFoundError as err:  # a checkout that is not installed
    if err.name not in ("image", "map_core", "pointcloud"):
        raise
    sys.exit("error: the map packages are not installed; run `pip install -e .` in the repository root")

Problems = List[str]

# reader and task settings of the configs in configs/pointcloud/
SETTINGS = {
    "shapenet_npoints": 1024,        # pretrain_shapenet.yaml: dataset.train.npoints
    "modelnet_npoints": 8192,        # finetune_modelnet*.yaml, svm_modelnet.yaml: dataset npoints
    "modelnet_task_npoints": 1024,   # finetune_modelnet.yaml: task.npoints (8k config: 8192)
    "fewshot_task_npoints": 1024,    # fewshot.yaml: task.npoints
    "scanobjectnn_task_npoints": 2048,  # finetune_scan_*.yaml: task.npoints
    "scanobjectnn_classes": 15,
    "shapenetpart_npoints": 2048,    # partseg_shapenetpart.yaml: dataset npoints
}
TASK_REASON = "that the finetuning configs' task.npoints asks for"


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0]


def _summary(bad: List[str], what: str, total: int) -> Problems:
    """'N of M <what> (first: ...)' when ``bad`` is not empty."""
    return [f"{len(bad)} of {total} {what} (first: {bad[0]})"] if bad else []


def _open(problems: Problems, build: Callable[[], object]) -> Optional[object]:
    """The reader ``build()`` returns, or None after recording its DataError (it checks at open)."""
    try:
        return build()
    except DataError as err:
        problems.append(_first_line(err))
        return None


def _read_all(dataset, what: str) -> Problems:
    """Read every cloud with the reader's own ``load`` (what training reads) and summarise the rejects."""
    bad = []
    for index in range(len(dataset)):
        try:
            dataset.load(index)
        except DataError as err:
            bad.append(_first_line(err))
    return _summary(bad, what, len(dataset))


def _require_points(dataset, needed: int) -> Problems:
    try:
        dataset.require_points(needed, TASK_REASON)
    except DataError as err:
        return [_first_line(err)]
    return []


def check_shapenet(root: Path) -> Problems:
    base = root / "ShapeNet55-34"
    problems: Problems = []
    for split in ("train", "test"):
        ds = _open(problems, lambda: ShapeNet(base / "ShapeNet-55", base / "shapenet_pc", subset=split,
                                              npoints=SETTINGS["shapenet_npoints"]))
        if ds is not None:
            print(f"  {split}.txt: {len(ds)} clouds")
            problems += _read_all(ds, f"clouds listed in {split}.txt are rejected")
    return problems


def check_modelnet(root: Path) -> Problems:
    base = root / "ModelNet" / "modelnet40_normal_resampled"
    names = base / "modelnet40_shape_names.txt"
    problems: Problems = []
    if names.exists():
        classes = [line for line in names.read_text().splitlines() if line.strip()]
        if len(classes) != 40:
            problems.append(f"{names}: {len(classes)} class names, expected 40")
    for split in ("train", "test"):
        ds = _open(problems, lambda: ModelNet(base, npoints=SETTINGS["modelnet_npoints"], subset=split))
        if ds is None:
            continue
        print(f"  {split}: {len(ds)} shapes" + (f" from {ds.dat.name}" if ds.dat else " (txt files)"))
        if ds.dat is None:
            print(f"  note: {split} .dat absent (optional; the txt files are read instead, more slowly)")
            problems += _read_all(ds, f"shape files of modelnet40_{split}.txt are rejected")
        problems += _require_points(ds, SETTINGS["modelnet_task_npoints"])
    return problems


def check_fewshot(root: Path) -> Problems:
    base = root / "ModelNetFewshot"
    if not base.exists():
        return [f"missing few-shot folder: {base}"]
    problems: Problems = []
    for way in (5, 10):
        for shot in (10, 20):
            if not any((base / name).exists() for name in (f"{way}way_{shot}shot", f"{way}way{shot}shot")):
                problems.append(f"missing folder {base / f'{way}way_{shot}shot'}")
                continue
            bad: Problems = []  # the first problem of each fold file
            for fold in range(10):
                for subset in ("train", "test"):
                    found: Problems = []
                    ds = _open(found, lambda: ModelNetFewShot(base, way, shot, fold, subset))
                    found += _require_points(ds, SETTINGS["fewshot_task_npoints"]) if ds is not None else []
                    if found:
                        bad.append(found[0])
                        break
            problems += _summary(bad, f"fold files of {way}way_{shot}shot are rejected", 10)
    return problems


def check_scanobjectnn(root: Path) -> Problems:
    problems: Problems = []
    for variant in VARIANTS:
        for subset in ("train", "test"):
            ds = _open(problems, lambda: ScanObjectNN(root / "ScanObjectNN", variant, subset,
                                                      num_classes=SETTINGS["scanobjectnn_classes"]))
            if ds is not None:
                print(f"  {variant} {subset}: {len(ds)} clouds of {ds.points.shape[1]} points")
                problems += _require_points(ds, SETTINGS["scanobjectnn_task_npoints"])
    return problems


def check_shapenetpart(root: Path) -> Problems:
    base = root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    problems: Problems = []
    for split in ("train", "val", "test"):
        ds = _open(problems, lambda: ShapeNetPart(base, split, npoints=SETTINGS["shapenetpart_npoints"]))
        if ds is not None:
            print(f"  {split}: {len(ds)} shapes")
            problems += _read_all(ds, f"shapes of the {split} list are rejected")
    return problems


def check_imagenet(root: Path) -> Problems:
    base = root / "imagenet"
    problems: Problems = []
    for split in ("train", "val"):
        folder = base / split
        if not folder.exists():
            problems.append(f"missing ImageNet folder: {folder}")
            continue
        classes = sorted(d for d in folder.iterdir() if d.is_dir())
        print(f"  {folder}: {len(classes)} class folders")
        if len(classes) != 1000:
            problems.append(f"{folder}: {len(classes)} class folders, expected 1000 (n01440764 ...)")
        _open(problems, lambda: ImageNet(str(base), split))
    return problems


CHECKS: Dict[str, Callable[[Path], Problems]] = {
    "shapenet": check_shapenet, "modelnet": check_modelnet, "fewshot": check_fewshot,
    "scanobjectnn": check_scanobjectnn, "imagenet": check_imagenet, "shapenetpart": check_shapenetpart,
}


def run_checks(root: Path, names: List[str]) -> int:
    failed = []
    for name in names:
        print(f"[{name}]", flush=True)
        problems = CHECKS[name](root)
        for problem in problems:
            print(f"  PROBLEM: {problem}")
        print(f"  {'OK' if not problems else f'{len(problems)} problem(s)'}", flush=True)
        if problems:
            failed.append(name)
    if failed:
        print(f"incomplete: {', '.join(failed)} (layouts and downloads: datasets/README.md)")
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", type=Path, help="folder holding the datasets (default: data)")
    parser.add_argument("--only", choices=sorted(CHECKS), help="check one dataset only")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        return run_checks(args.root, [args.only] if args.only else list(CHECKS))
    except (UserError, FileNotFoundError) as err:
        return report_error(err, args.debug)


if __name__ == "__main__":
    sys.exit(main())
