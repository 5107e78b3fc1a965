"""Bundled demo data: scikit-learn's 1,797 real 8x8 handwritten digits as images and 3D clouds.

Everything is written in the real on-disk formats, so the real readers run on it unchanged::

    <out>/manifest.json                                   version, seed, split sizes, class counts
    <out>/images/{train,val}/digit_<c>/<index>.png        32x32 RGB (ImageNet reader)
    <out>/points/ShapeNet55-34/ShapeNet-55/{train,test}.txt          '<taxonomy>-<model>.npy' lines
    <out>/points/ShapeNet55-34/shapenet_pc/<taxonomy>-<model>.npy    (1024, 3) float32
    <out>/points/ScanObjectNN/main_split/{training,test}_objectdataset.h5
                                                          data (M, 1024, 3) float32, label (M,) int64
    <out>/points/shapenetcore_partanno_segmentation_benchmark_v0_normal/   (ShapeNetPart layout)
        synsetoffset2category.txt                         'digit_<c>\t<taxonomy>' for c = 0..9
        train_test_split/shuffled_{train,val,test}_file_list.json   'shape_data/<taxonomy>/digit<index>'
                                                          (val is empty)
        <taxonomy>/digit<index>.txt                       1024 rows 'x y z 0 0 0 part'
    <out>/scenes/ADEChallengeData2016/, <out>/scenes/coco/   digit scenes for segmentation and
                                                          detection (``datasets/digit_scenes.py``)

Split: ``sklearn.model_selection.train_test_split(test_size=0.25, stratify=labels,
random_state=seed)`` -> 1,347 train / 450 test (val / test), the same digits in every format.
``<index>`` is the digit's index in ``load_digits()`` (4 digits, zero-padded); the taxonomy of
digit class c is the synset-like ``f"{c:08d}"`` and the model id ``digit<index>``.

3D digits: 1,024 points per cloud (the real ShapeNet files hold 8192 and ScanObjectNN 2048; the
readers take any count at least ``npoints``). Pixels are drawn with probability proportional to
their ink, each point jittered uniformly inside its pixel (x right, y up), extruded to a depth
z ~ U[-d, d] with d ~ U[0.1, 0.3] x 8 px per cloud, rotated about the vertical (y) axis by an
angle uniform in [-MAX_ANGLE, MAX_ANGLE] (30 degrees: with a full turn the coarse 8x8 digits are
far too hard to learn in the demo's CPU-minutes budget), then centred at the mean and divided by the largest norm. Each digit has its own
generator seeded by (seed, index), so a cloud does not depend on which other digits are built.

Part labels (ShapeNetPart layout): each digit class c owns parts 3c, 3c + 1, 3c + 2, the bottom,
middle and top third of the cloud's height (y, which the rotation keeps); 30 parts in all. The
rows are the same 1,024 points as the npy / h5 clouds (xyz to 5 decimals); the normals are zero
(the clouds fill a volume, they have no surface normals; the reader does not use them).

The build is atomic (a temporary sibling folder renamed at the end) and idempotent: when the
manifest matches (version, seed, limit_per_class) a second call returns at once.
CLI: ``python datasets/demo_digits.py --out .cache/demo_digits``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import h5py
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digit_scenes import scene_paths, write_digit_scenes  # noqa: E402  (this folder is not a package)

logger = logging.getLogger(__name__)

VERSION = 4
MAX_ANGLE = np.pi / 6  # largest rotation about the vertical axis, radians
NUM_CLASSES = 10
NUM_POINTS = 1024
IMAGE_SIZE = 32
DIGIT_SIZE = 8
TEST_FRACTION = 0.25
DEPTH_RANGE = (0.1, 0.3)
PART_NAMES = ("bottom", "middle", "top")  # part k of digit class c has the global label 3c + k
PARTSEG_ROW_FORMAT = "%.5f %.5f %.5f %d %d %d %d"  # x y z nx ny nz part
MANIFEST = "manifest.json"

PathLike = Union[str, Path]


def class_name(label: int) -> str:
    """Image class folder of a digit class, e.g. 'digit_3'."""
    return f"digit_{label}"


def taxonomy_id(label: int) -> str:
    """Synset-like ShapeNet taxonomy id of a digit class, e.g. '00000003'."""
    return f"{label:08d}"


def split_indices(labels: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Stratified train / test indices (each sorted) of ``labels`` (S,), 25 % test."""
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
                                   random_state=seed)
    return np.sort(train), np.sort(test)


def first_per_class(indices: np.ndarray, labels: np.ndarray, limit: Optional[int]) -> np.ndarray:
    """The first ``limit`` entries of sorted ``indices`` in each class (all when limit is None)."""
    if limit is None:
        return indices
    keep = np.concatenate([indices[labels[indices] == c][:limit] for c in range(NUM_CLASSES)])
    return np.sort(keep)


def digit_image(pixels: np.ndarray) -> Image.Image:
    """pixels: (8, 8) intensities 0..16 -> 32x32 RGB image (bilinear, grey in all 3 channels)."""
    grey = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.float32))  # mode "F"
    grey = np.asarray(grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")


def extrude_digit(pixels: np.ndarray, rng: np.random.Generator, num_points: int = NUM_POINTS) -> np.ndarray:
    """pixels: (8, 8) intensities -> (num_points, 3) points in pixel units (x right, y up, z depth).

    Pixels are drawn with probability proportional to intensity and jittered uniformly inside;
    depth z ~ U[-d, d] with one d ~ U[0.1, 0.3] x 8 px per cloud.
    """
    ink = pixels.astype(np.float64).ravel()
    if ink.sum() <= 0:
        raise ValueError("a digit image without ink has no stroke to sample points on")
    cells = rng.choice(ink.size, size=num_points, p=ink / ink.sum())
    rows, cols = np.divmod(cells, pixels.shape[1])
    x = cols + rng.random(num_points)
    y = (pixels.shape[0] - 1 - rows) + rng.random(num_points)
    depth = rng.uniform(*DEPTH_RANGE) * DIGIT_SIZE
    z = rng.uniform(-depth, depth, num_points)
    return np.stack([x, y, z], axis=1)


def rotate_about_y(points: np.ndarray, angle: float) -> np.ndarray:
    """points: (N, 3) -> (N, 3) rotated by ``angle`` radians about the vertical (y) axis."""
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return points @ rotation.T


def normalize_points(points: np.ndarray) -> np.ndarray:
    """points: (N, 3) -> (N, 3) centred at the mean and divided by the largest norm."""
    points = points - points.mean(axis=0)
    return points / np.linalg.norm(points, axis=1).max()


def digit_point_cloud(pixels: np.ndarray, seed: int, index: int) -> np.ndarray:
    """The demo's 3D digit ``index``: pixels (8, 8) -> (NUM_POINTS, 3) float32, normalised."""
    rng = np.random.default_rng([seed, index])
    points = extrude_digit(pixels, rng)
    points = rotate_about_y(points, rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    return normalize_points(points).astype(np.float32)


def height_parts(cloud: np.ndarray) -> np.ndarray:
    """cloud (N, 3) -> part of each point (N,) int64: 0 / 1 / 2 = bottom / middle / top third of
    the cloud's extent along y (the highest point belongs to the top third)."""
    y = cloud[:, 1].astype(np.float64)
    span = max(float(y.max() - y.min()), 1e-12)
    return np.minimum((len(PART_NAMES) * (y - y.min()) / span).astype(np.int64), len(PART_NAMES) - 1)


def demo_paths(out_dir: PathLike) -> Dict[str, Path]:
    """Where a build in ``out_dir`` puts each dataset (the roots the real readers take)."""
    out = Path(out_dir)
    shapenet = out / "points" / "ShapeNet55-34"
    return {
        "root": out,
        "manifest": out / MANIFEST,
        "images": out / "images",
        "shapenet_list": shapenet / "ShapeNet-55",
        "shapenet_pc": shapenet / "shapenet_pc",
        "scanobjectnn": out / "points" / "ScanObjectNN",
        "shapenetpart": out / "points" / "shapenetcore_partanno_segmentation_benchmark_v0_normal",
        **scene_paths(out / "scenes"),
    }


def _write_split(root: Path, split: str, indices: np.ndarray, images: np.ndarray, labels: np.ndarray,
                 seed: int) -> None:
    paths = demo_paths(root)
    image_split = "train" if split == "train" else "val"
    names, clouds, part_entries = [], [], []
    for index in indices:
        label = int(labels[index])
        folder = paths["images"] / image_split / class_name(label)
        folder.mkdir(parents=True, exist_ok=True)
        digit_image(images[index]).save(folder / f"{index:04d}.png")
        cloud = digit_point_cloud(images[index], seed, int(index))
        name = f"{taxonomy_id(label)}-digit{index:04d}.npy"
        np.save(paths["shapenet_pc"] / name, cloud)
        names.append(name)
        clouds.append(cloud)
        parts = len(PART_NAMES) * label + height_parts(cloud)
        rows = np.column_stack([cloud, np.zeros((len(cloud), 3)), parts])
        (paths["shapenetpart"] / taxonomy_id(label)).mkdir(exist_ok=True)
        np.savetxt(paths["shapenetpart"] / taxonomy_id(label) / f"digit{index:04d}.txt", rows, fmt=PARTSEG_ROW_FORMAT)
        part_entries.append(f"shape_data/{taxonomy_id(label)}/digit{index:04d}")
    (paths["shapenet_list"] / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    split_list = paths["shapenetpart"] / "train_test_split" / f"shuffled_{split}_file_list.json"
    split_list.write_text(json.dumps(part_entries))
    h5_name = "training_objectdataset.h5" if split == "train" else "test_objectdataset.h5"
    with h5py.File(paths["scanobjectnn"] / "main_split" / h5_name, "w") as f:
        f.create_dataset("data", data=np.stack(clouds), track_times=False)
        f.create_dataset("label", data=labels[indices].astype(np.int64), track_times=False)


def _manifest(labels: np.ndarray, splits: Dict[str, np.ndarray]) -> dict:
    return {
        "num_points": NUM_POINTS,
        "image_size": IMAGE_SIZE,
        "classes": [class_name(c) for c in range(NUM_CLASSES)],
        "split_sizes": {split: int(len(idx)) for split, idx in splits.items()},
        "class_counts": {split: np.bincount(labels[idx], minlength=NUM_CLASSES).tolist()
                         for split, idx in splits.items()},
    }


def build_once(out_dir: PathLike, what: str, key: Dict[str, Any], force: bool,
               write: Callable[[Path], dict]) -> Path:
    """Build ``what`` into ``out_dir`` atomically, unless it already holds a build whose manifest
    has ``key``'s values (and not ``force``). ``write(tmp)`` fills a temporary sibling folder and
    returns the rest of the manifest; the folder then replaces ``out_dir``. An existing ``out_dir``
    is replaced only if it is empty or a previous build (has a manifest); anything else raises
    FileExistsError. Returns the resolved ``out_dir``."""
    out = Path(out_dir).resolve()
    if not force:
        try:
            manifest = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        if all(manifest.get(k, object()) == v for k, v in key.items()):
            logger.info("%s already built in %s", what, out)
            return out
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise FileExistsError(f"{out} exists and is not a {what} build (no {MANIFEST}); "
                              f"choose another folder or empty it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the build is ordinary shared data
        manifest = {**key, **write(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace(out, tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("%s built in %s: %s", what, out, manifest["split_sizes"])
    return out


def build_demo_data(out_dir: PathLike, seed: int = 0, force: bool = False,
                    limit_per_class: Optional[int] = None) -> Dict[str, Path]:
    """Write the demo images and point clouds under ``out_dir``; returns ``demo_paths(out_dir)``.

    Returns at once when ``out_dir`` already holds a build of this version, seed and
    ``limit_per_class`` (unless ``force``). ``limit_per_class`` keeps the first digits of each class
    in each split (for quick tests). An existing ``out_dir`` is replaced only if it is empty or a
    previous demo build (has a manifest); anything else raises FileExistsError.
    """
    def write(tmp: Path) -> dict:
        digits = load_digits()
        images, labels = digits.images, digits.target.astype(np.int64)
        train, test = split_indices(labels, seed)
        splits = {"train": first_per_class(train, labels, limit_per_class),
                  "test": first_per_class(test, labels, limit_per_class)}
        tmp_paths = demo_paths(tmp)
        for key in ("shapenet_list", "shapenet_pc"):
            tmp_paths[key].mkdir(parents=True)
        (tmp_paths["scanobjectnn"] / "main_split").mkdir(parents=True)
        (tmp_paths["shapenetpart"] / "train_test_split").mkdir(parents=True)
        (tmp_paths["shapenetpart"] / "synsetoffset2category.txt").write_text(
            "".join(f"{class_name(c)}\t{taxonomy_id(c)}\n" for c in range(NUM_CLASSES)))
        (tmp_paths["shapenetpart"] / "train_test_split" / "shuffled_val_file_list.json").write_text("[]")
        for split, indices in splits.items():
            _write_split(tmp, split, indices, images, labels, seed)
        scenes = write_digit_scenes(tmp / "scenes", images, labels, splits, seed)
        return {**_manifest(labels, splits), "scenes": scenes}

    key = {"version": VERSION, "seed": seed, "limit_per_class": limit_per_class}
    return demo_paths(build_once(out_dir, "demo-digits", key, force, write))


def _replace(out: Path, tmp: Path) -> None:
    """Move the finished build ``tmp`` to ``out``; a concurrent identical build may have won."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / MANIFEST).exists():
            raise
        logger.info("another process finished the demo build in %s first", out)
    if old is not None:
        shutil.rmtree(old)


def builder_main(doc: str, build: Callable[..., Dict[str, Path]], out: str, size_flag: str,
                 size_default: Optional[int], size_help: str) -> None:
    """The command line of a demo data builder: ``--out``, ``--seed``, ``--force`` and its size
    option (``size_flag``, passed to ``build`` under the same name with underscores); prints the
    paths it returns as JSON."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(size_flag, type=int, default=size_default, help=size_help)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    size = size_flag.lstrip("-").replace("-", "_")
    paths = build(args.out, seed=args.seed, force=args.force, **{size: getattr(args, size)})
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


def main() -> None:
    builder_main(__doc__, build_demo_data, ".cache/demo_digits", "--limit-per-class", None,
                 "keep only the first N digits of each class in each split")


if __name__ == "__main__":
    main()
