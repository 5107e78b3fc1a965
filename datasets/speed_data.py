"""Synthetic data at the real size, in the real layouts, for timing the shipped configs.

What ``tools/train.py`` runs on ImageNet and ShapeNet-55 is timed on files that cost what the real
ones cost to read, with no download (BENCHMARKS.md, "the shipped configs")::

    <out>/imagenet/{train,val}/c<k>/<i>.JPEG      500x375 RGB JPEGs, quality 90 (about ImageNet's
                                                   mean size and file size); smooth colour fields
                                                   plus noise, so they compress like photographs
    <out>/ShapeNet55-34/ShapeNet-55/{train,test}.txt, shapenet_pc/<taxonomy>-<model>.npy
                                                   (8192, 3) float32 clouds, as ShapeNet-55's

The content is random: these files are for measuring speed, never accuracy.
CLI: ``python datasets/speed_data.py --out /tmp/speed_data [--images 3000] [--clouds 2000]``.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Tuple, Union

import numpy as np
from PIL import Image

IMAGE_SIZE = (500, 375)  # width, height: ImageNet's most common size
JPEG_QUALITY = 90
CLOUD_POINTS = 8192
CLASSES = 100


def _photo_like(seed: int) -> Image.Image:
    """A smooth random colour field (a coarse grid upsampled bicubically) plus pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    img = np.asarray(coarse.resize(IMAGE_SIZE, Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0.0, 12.0, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _write_jpeg(job: Tuple[str, int]) -> None:
    path, seed = job
    _photo_like(seed).save(path, quality=JPEG_QUALITY)


def write_imagenet(root: Path, images: int, val_images: int, workers: int) -> None:
    """``images`` training and ``val_images`` validation JPEGs over ``CLASSES`` class folders."""
    jobs = []
    for split, count in (("train", images), ("val", val_images)):
        for i in range(count):
            folder = root / split / f"c{i % CLASSES:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((str(folder / f"{i:06d}.JPEG"), i if split == "train" else 10**7 + i))
    if workers <= 1:
        for job in jobs:
            _write_jpeg(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=64))


def write_shapenet(root: Path, clouds: int, seed: int = 0) -> None:
    """``clouds`` random clouds in the ShapeNet-55 layout, 90% listed in train.txt, 10% in test.txt."""
    rng = np.random.default_rng(seed)
    (root / "shapenet_pc").mkdir(parents=True, exist_ok=True)
    (root / "ShapeNet-55").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(clouds):
        name = f"{i % 55:08d}-model{i:06d}.npy"
        np.save(root / "shapenet_pc" / name, rng.standard_normal((CLOUD_POINTS, 3)).astype(np.float32))
        names.append(name)
    cut = int(0.9 * clouds)
    (root / "ShapeNet-55" / "train.txt").write_text("\n".join(names[:cut]) + "\n")
    (root / "ShapeNet-55" / "test.txt").write_text("\n".join(names[cut:]) + "\n")


def build_speed_data(out: Union[str, Path], images: int = 3000, val_images: int = 200, clouds: int = 2000,
                     workers: int = os.cpu_count() or 1) -> Path:
    out = Path(out)
    if images:
        write_imagenet(out / "imagenet", images, val_images, workers)
    if clouds:
        write_shapenet(out / "ShapeNet55-34", clouds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=3000, help="training JPEGs (0: none)")
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--clouds", type=int, default=2000, help="ShapeNet-55 clouds (0: none)")
    args = p.parse_args()
    for name in ("images", "val_images", "clouds"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    out = build_speed_data(args.out, args.images, args.val_images, args.clouds)
    print(f"speed data written to {out}")


if __name__ == "__main__":
    main()
