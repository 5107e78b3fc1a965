"""Digit scenes for the dense tasks: several demo digits pasted at random sizes and places on a
canvas, written in the ADE20K and COCO layouts so the real readers run on them.

Each split's digits (the demo's train / test split) are shuffled (seeded) and dealt into scenes of
1 to ``MAX_DIGITS`` digits; every digit lands in exactly one scene, upscaled bilinearly from 8x8 to
a side drawn from ``SIDE_RANGE`` and placed where its square overlaps no earlier one (up to
``PLACEMENT_TRIES`` draws, else it is left out), white ink on a black ``CANVAS`` x ``CANVAS`` canvas
(grey RGB, the value of the brightest digit pixel under each pixel). Labels, from each digit's own
upscaled ink:

* ADE20K layout (``<out>/ADEChallengeData2016``): 1 = background, 2 + c = digit class c where the
  ink is at least ``INK`` (128 of 255), 0 (ignored, ADE20K's "other") on the faint rim where it is
  between ``RIM`` (32) and ``INK``; after the reader's shift: 11 classes, background 0, digit c c + 1.
* COCO layout (``<out>/coco``): one instance per digit, its mask the pixels of ink >= ``INK``, its
  box the mask's extent (x, y, w, h with w = columns spanned), ``area`` the mask's pixel count,
  the mask as uncompressed RLE (column-major run lengths, zeros first); category id c + 1 named
  ``digit_<c>``.

Files::

    ADEChallengeData2016/images/{training,validation}/scene_<n>.jpg
    ADEChallengeData2016/annotations/{training,validation}/scene_<n>.png
    coco/{train2017,val2017}/<n, 12 digits>.jpg
    coco/annotations/instances_{train2017,val2017}.json

A scene's generator is seeded by (seed, split, scene index), so the files are the same on every
build. Called by ``demo_digits.build_demo_data``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

CANVAS = 64
SIDE_RANGE = (16, 32)  # digit side in pixels, inclusive
MAX_DIGITS = 3
PLACEMENT_TRIES = 50
INK = 128
RIM = 32
BACKGROUND = 1  # ADE20K-layout label of the background; digit c is 2 + c, 0 is ignored
SPLITS = {"train": ("training", "train2017"), "test": ("validation", "val2017")}  # demo split -> (ADE20K, COCO)
JPEG_QUALITY = 95


def scene_paths(out: Path) -> Dict[str, Path]:
    """The roots the ADE20K and COCO readers take."""
    return {"ade20k": out / "ADEChallengeData2016", "coco": out / "coco"}


def upscale_digit(pixels: np.ndarray, side: int) -> np.ndarray:
    """(8, 8) intensities 0..16 -> (side, side) uint8 0..255, bilinear."""
    grey = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.float32)).resize((side, side), Image.BILINEAR)
    return np.clip(np.rint(np.asarray(grey)), 0, 255).astype(np.uint8)


def compose_scene(digits: Sequence[np.ndarray], labels: Sequence[int],
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Paste ``digits`` (each (8, 8)) -> (image (CANVAS, CANVAS) uint8, ADE20K-layout class map
    (CANVAS, CANVAS) uint8, [(class, ink mask (CANVAS, CANVAS) bool)] of the digits placed)."""
    image = np.zeros((CANVAS, CANVAS), np.uint8)
    classes = np.full((CANVAS, CANVAS), BACKGROUND, np.uint8)
    placed: List[Tuple[int, int, int]] = []
    instances = []
    for pixels, label in zip(digits, labels):
        for _ in range(PLACEMENT_TRIES):
            side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
            y, x = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
            if all(y + side <= py or py + ps <= y or x + side <= px or px + ps <= x for py, px, ps in placed):
                break
        else:
            continue
        placed.append((y, x, side))
        ink = upscale_digit(pixels, side)
        window = (slice(y, y + side), slice(x, x + side))
        image[window] = np.maximum(image[window], ink)
        classes[window][ink >= RIM] = 0
        classes[window][ink >= INK] = 2 + int(label)
        mask = np.zeros((CANVAS, CANVAS), bool)
        mask[window] = ink >= INK
        if mask.any():
            instances.append((int(label), mask))
    return image, classes, instances


def rle_counts(mask: np.ndarray) -> List[int]:
    """COCO's uncompressed RLE of a bool mask: run lengths in column-major order, zeros first."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [0] + runs if flat[0] else runs


def coco_annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray) -> dict:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    return {"id": ann_id, "image_id": image_id, "category_id": label + 1, "bbox": box, "area": int(mask.sum()),
            "iscrowd": 0, "segmentation": {"size": list(mask.shape), "counts": rle_counts(mask)}}


def deal(indices: np.ndarray, rng: np.random.Generator) -> List[np.ndarray]:
    """``indices`` shuffled and cut into consecutive scenes of 1 .. MAX_DIGITS digits."""
    order, scenes, start = rng.permutation(indices), [], 0
    while start < len(order):
        count = int(rng.integers(1, MAX_DIGITS + 1))
        scenes.append(order[start:start + count])
        start += count
    return scenes


def write_digit_scenes(out: Path, images: np.ndarray, labels: np.ndarray, splits: Dict[str, np.ndarray],
                       seed: int, num_classes: int = 10) -> Dict[str, int]:
    """Write the scenes of each demo split (``splits``: "train" / "test" -> digit indices into
    ``images`` (S, 8, 8) and ``labels`` (S,)) under ``out``; returns the scene count per split."""
    paths = scene_paths(Path(out))
    categories = [{"id": c + 1, "name": f"digit_{c}", "supercategory": "digit"} for c in range(num_classes)]
    counts = {}
    for split, indices in splits.items():
        ade_split, coco_split = SPLITS[split]
        folders = [paths["ade20k"] / "images" / ade_split, paths["ade20k"] / "annotations" / ade_split,
                   paths["coco"] / coco_split, paths["coco"] / "annotations"]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        coco = {"info": {"description": f"MAP demo digit scenes, {coco_split}"}, "licenses": [], "images": [],
                "annotations": [], "categories": categories}
        split_key = list(SPLITS).index(split)
        scenes = deal(indices, np.random.default_rng([seed, split_key]))
        for n, members in enumerate(scenes):
            rng = np.random.default_rng([seed, split_key, n])
            image, classes, instances = compose_scene(images[members], labels[members], rng)
            rgb = Image.fromarray(image).convert("RGB")
            rgb.save(folders[0] / f"scene_{n:05d}.jpg", quality=JPEG_QUALITY)
            Image.fromarray(classes).save(folders[1] / f"scene_{n:05d}.png")
            image_id = n + 1
            rgb.save(folders[2] / f"{image_id:012d}.jpg", quality=JPEG_QUALITY)
            coco["images"].append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": CANVAS,
                                   "width": CANVAS})
            for label, mask in instances:
                coco["annotations"].append(coco_annotation(len(coco["annotations"]) + 1, image_id, label, mask))
        (folders[3] / f"instances_{coco_split}.json").write_text(json.dumps(coco))
        counts[split] = len(scenes)
    return counts
