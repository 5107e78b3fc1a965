"""Readers of the dense-task datasets and their transforms: ADE20K (semantic segmentation) and
COCO 2017 (detection, instance segmentation).

ADE20K (SceneParsing, ``ADEChallengeData2016``)::

    <root>/images/{training,validation}/<name>.jpg        RGB
    <root>/annotations/{training,validation}/<name>.png   one channel: 0 other (ignored), 1..150

Labels: 0 -> 255 (ignored), c -> c - 1 (mmseg's ``reduce_zero_label``), so classes are 0..149.
Training (mmseg's ADE20K pipeline): resize keeping the aspect ratio to fit ``scale`` (2048 x 512)
times a ratio drawn from ``ratio_range`` (0.5 .. 2.0); a random ``crop_size`` crop, redrawn up to
10 times while one class covers ``cat_max_ratio`` (0.75) or more of its labelled pixels (or it has
one class only); horizontal flip (p 0.5); photometric distortion; normalise; pad to the crop
(image 0, label 255). Evaluation: resize keeping the ratio to fit ``scale``; the label stays at
the original size (the task resizes the logits to it).

COCO 2017::

    <root>/{train2017,val2017}/<file_name>                 images named in the json
    <root>/annotations/instances_{train2017,val2017}.json  boxes [x, y, w, h], polygons or RLE masks

Categories (80, ids 1..90 with gaps) become labels 1..K in id order (0 is the background of
torchvision's detectors). Crowd annotations and boxes under 1 pixel wide or high are left out of
the targets; training drops the images left without a box (empty or only tiny boxes).
Training: large-scale jitter (ViTDet): horizontal flip, resize to ``image_size`` x a factor from
``scale_range`` (0.1 .. 2.0), a random ``image_size`` square crop padded with zeros when smaller,
boxes cut by the crop dropped. Images come as floats in [0, 1]; the detector normalises them.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from map_core.errors import DataError
from map_core.registry import DATASETS

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
ADE_SPLITS = ("training", "validation")
ADE_LAYOUT = ("expected layout: <root>/images/<split>/<name>.jpg with <root>/annotations/<split>/<name>.png, "
              f"split one of {', '.join(ADE_SPLITS)}")
COCO_SPLITS = ("train2017", "val2017")
COCO_LAYOUT = ("expected layout: <root>/<split>/<image files> and <root>/annotations/instances_<split>.json, "
               f"split one of {', '.join(COCO_SPLITS)}")
TRANSFORMS = ("train", "eval")


def collate_lists(batch: Sequence[Tuple[Any, ...]]) -> Tuple[list, ...]:
    """[(a0, b0), (a1, b1)] -> ([a0, a1], [b0, b1]): samples of different sizes, not stacked."""
    return tuple(list(column) for column in zip(*batch))


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform '{transform}' (choose {' or '.join(TRANSFORMS)})")


def _folder(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder '{path}' does not exist; {layout}")
    return path


def _coin() -> bool:
    return bool(torch.rand(()) < 0.5)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


# ----------------------------------------------------------------------------- ADE20K
def ade_pairs(root: str | Path, split: str) -> List[Tuple[Path, Path]]:
    """(image, annotation) paths of an ADE20K split, sorted by name; DataError for a missing folder
    or an image without its annotation (or the reverse)."""
    root = Path(root)
    if split not in ADE_SPLITS:
        raise DataError(f"ADE20K split '{split}': expected one of {', '.join(ADE_SPLITS)}")
    _folder(root, "ADE20K root", ADE_LAYOUT)
    images = {p.stem: p for p in _folder(root / "images" / split, "image", ADE_LAYOUT).iterdir()
              if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith(".")}
    labels = {p.stem: p for p in _folder(root / "annotations" / split, "annotation", ADE_LAYOUT).glob("*.png")
              if not p.name.startswith(".")}
    if not images:
        raise DataError(f"no images in '{root / 'images' / split}'; {ADE_LAYOUT}")
    for missing, have, kind in ((set(images) - set(labels), images, "annotation"),
                                (set(labels) - set(images), labels, "image")):
        if missing:
            first = have[sorted(missing)[0]]
            raise DataError(f"'{first}' has no {kind} ({len(missing)} such files in the split); {ADE_LAYOUT}")
    return [(images[name], labels[name]) for name in sorted(images)]


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """ADE20K labels (H, W) uint8: 0 -> 255 (ignored), c -> c - 1."""
    return (label.astype(np.int16) - 1).astype(np.uint8)


def rescale_size(width: int, height: int, scale: Sequence[float]) -> Tuple[int, int]:
    """(width, height) resized keeping the ratio to fit ``scale`` = (long side, short side), as
    mmcv's ``rescale_size``: the factor is the smaller of long / max(w, h) and short / min(w, h)."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def crop_box(label: np.ndarray, crop: int, cat_max_ratio: float, tries: int = 10) -> Tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of a random ``crop`` window (smaller sides are taken whole), redrawn up to
    ``tries`` times while the crop's labelled pixels have one class only or one class covers
    ``cat_max_ratio`` of them (mmseg's ``RandomCrop``; 1.0 accepts the first draw)."""
    height, width = label.shape
    for _ in range(tries):
        y1 = int(torch.randint(max(height - crop, 0) + 1, ()))
        x1 = int(torch.randint(max(width - crop, 0) + 1, ()))
        box = (y1, min(y1 + crop, height), x1, min(x1 + crop, width))
        if cat_max_ratio >= 1.0:
            break
        values, counts = np.unique(label[box[0]:box[1], box[2]:box[3]], return_counts=True)
        counts = counts[values != IGNORE_INDEX]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return box


def photometric_distortion(img: torch.Tensor) -> torch.Tensor:
    """img (3, H, W) in [0, 1] -> distorted as mmseg's ``PhotoMetricDistortion``: each with
    probability 0.5, brightness + U(-32, 32) / 255, contrast x U(0.5, 1.5) (before or after the
    colour changes, at random), saturation x U(0.5, 1.5) and hue + k / 180 of a turn, k in -18..18
    (OpenCV's hue unit), clipped to [0, 1] after each. Saturation and hue go through torchvision's
    ``adjust_saturation`` (a blend with the grey image) and ``adjust_hue``, not OpenCV's HSV."""
    if _coin():
        img = (img + _uniform(-32, 32) / 255).clamp(0, 1)
    contrast_first = _coin()
    contrast = _coin(), _uniform(0.5, 1.5)
    if contrast_first and contrast[0]:
        img = (img * contrast[1]).clamp(0, 1)
    if _coin():
        img = TF.adjust_saturation(img, _uniform(0.5, 1.5)).clamp(0, 1)
    if _coin():
        img = TF.adjust_hue(img, int(torch.randint(-18, 19, ())) / 180)
    if not contrast_first and contrast[0]:
        img = (img * contrast[1]).clamp(0, 1)
    return img


@DATASETS.register("ADE20K")
class ADE20K(Dataset):
    """ADE20K split -> (image (3, h, w) normalised float, label (h', w') int64; 255 = ignored).

    ``transform``: ``train`` (crops of ``crop_size``) or ``eval`` (the resized image and the label at
    the original size; batches are lists, see ``collate_fn``). See the module docstring for the
    layout and the transforms. A label above ``num_classes`` or an unreadable file raises DataError
    naming the file.
    """

    def __init__(self, root: str = "data/ade/ADEChallengeData2016", split: str = "training",
                 transform: str = "train", num_classes: int = 150, scale: Sequence[int] = (2048, 512),
                 ratio_range: Sequence[float] = (0.5, 2.0), crop_size: int = 512, cat_max_ratio: float = 0.75,
                 photometric: bool = True, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD):
        _check_transform(transform)
        self.samples = ade_pairs(root, split)
        self.training, self.num_classes = transform == "train", num_classes
        self.scale, self.ratio_range, self.crop_size = tuple(scale), tuple(ratio_range), crop_size
        self.cat_max_ratio, self.photometric = cat_max_ratio, photometric
        self.mean, self.std = tuple(mean), tuple(std)
        self.collate_fn = None if self.training else collate_lists
        log.info("ADE20K %s: %d images from '%s' (transform %s)", split, len(self.samples), root, transform)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> Tuple[Image.Image, np.ndarray]:
        """The RGB image and its reduced label (H, W) uint8 of sample ``index``."""
        image_path, label_path = self.samples[index]
        try:
            image = Image.open(image_path).convert("RGB")
            label = np.asarray(Image.open(label_path))
        except OSError as err:
            raise DataError(f"cannot read ADE20K sample '{image_path}' / '{label_path}': {err}") from None
        if label.ndim != 2:
            raise DataError(f"'{label_path}': expected a one-channel label image, found shape {label.shape}")
        if label.shape != (image.height, image.width):
            raise DataError(f"'{label_path}' is {label.shape[1]}x{label.shape[0]}, its image '{image_path}' "
                            f"{image.width}x{image.height}")
        if label.max(initial=0) > self.num_classes:
            raise DataError(f"'{label_path}' holds label {label.max()}, above the {self.num_classes} classes "
                            f"(task.num_classes)")
        return image, reduce_zero_label(label)

    def normalise(self, image: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        if not self.training:
            size = rescale_size(image.width, image.height, self.scale)
            return self.normalise(image.resize(size, Image.BILINEAR)), torch.from_numpy(label.astype(np.int64))
        ratio = _uniform(*self.ratio_range)
        size = rescale_size(image.width, image.height, [s * ratio for s in self.scale])
        image = image.resize(size, Image.BILINEAR)
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
        y1, y2, x1, x2 = crop_box(label, self.crop_size, self.cat_max_ratio)
        img, target = TF.to_tensor(image)[:, y1:y2, x1:x2], torch.from_numpy(label[y1:y2, x1:x2].astype(np.int64))
        if _coin():
            img, target = img.flip(-1), target.flip(-1)
        if self.photometric:
            img = photometric_distortion(img)
        pad = (0, self.crop_size - img.shape[-1], 0, self.crop_size - img.shape[-2])
        img = F.pad(TF.normalize(img, self.mean, self.std), pad)
        return img, F.pad(target, pad, value=IGNORE_INDEX)


# ----------------------------------------------------------------------------- COCO
def load_coco(path: Path) -> Any:
    """A pycocotools ``COCO`` of the json at ``path`` (its prints go to the log); DataError for a
    missing or malformed file or dangling ids."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataError(f"COCO annotation file '{path}' does not exist; {COCO_LAYOUT}")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise DataError(f"'{path}' is not valid JSON ({err})") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise DataError(f"'{path}' lacks the key(s) {', '.join(missing)} of a COCO instances file")
    images, categories = {i["id"] for i in data["images"]}, {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        if ann.get("image_id") not in images or ann.get("category_id") not in categories:
            raise DataError(f"'{path}': annotation {ann.get('id')} names image {ann.get('image_id')} and "
                            f"category {ann.get('category_id')}, not both listed in the file")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco.createIndex()
    log.debug("pycocotools: %s", printed.getvalue().strip())
    return coco


def usable_annotations(anns: Sequence[Dict[str, Any]], width: int, height: int) -> List[Dict[str, Any]]:
    """The non-crowd annotations whose box, clipped to the image, is at least 1 pixel wide and high,
    each with ``box`` (x1, y1, x2, y2) added."""
    out = []
    for ann in anns:
        x, y, w, h = ann["bbox"]
        box = (max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height)))
        if not ann.get("iscrowd", 0) and box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
            out.append({**ann, "box": box})
    return out


def lsj_transform(image_size: int, scale_range: Sequence[float]) -> v2.Transform:
    """ViTDet's large-scale jitter on (image, target) with boxes and masks, to float images."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.ScaleJitter((image_size, image_size), scale_range=tuple(scale_range)),
        v2.RandomCrop((image_size, image_size), pad_if_needed=True),
        v2.SanitizeBoundingBoxes(min_size=1),
        v2.ToDtype(torch.float32, scale=True),
    ])


@DATASETS.register("COCO")
class COCODetection(Dataset):
    """COCO split -> (image (3, H, W) float in [0, 1], target {boxes (N, 4) x1 y1 x2 y2, labels (N,)
    int64 in 1..K, masks (N, H, W) uint8, image_id}); batches are lists (``collate_fn``).

    ``label_to_category`` maps labels back to the json's category ids; ``coco`` is the pycocotools
    index (the evaluation's ground truth). ``transform``: ``train`` (large-scale jitter at
    ``image_size``, ``scale_range``) or ``eval`` (the image as it is). The json must hold
    ``num_classes`` categories. Missing or mismatched files raise DataError naming them.
    """

    def __init__(self, root: str = "data/coco", split: str = "train2017", transform: str = "train",
                 num_classes: int = 80, image_size: int = 1024, scale_range: Sequence[float] = (0.1, 2.0)):
        _check_transform(transform)
        if split not in COCO_SPLITS:
            raise DataError(f"COCO split '{split}': expected one of {', '.join(COCO_SPLITS)}")
        root_path = _folder(Path(root), "COCO root", COCO_LAYOUT)
        self.image_dir = _folder(root_path / split, "image", COCO_LAYOUT)
        self.annotation_file = root_path / "annotations" / f"instances_{split}.json"
        self.coco = load_coco(self.annotation_file)
        categories = sorted(self.coco.cats)
        if len(categories) != num_classes:
            raise DataError(f"'{self.annotation_file}' has {len(categories)} categories, task.num_classes is "
                            f"{num_classes}")
        self.label_to_category = {label: cat for label, cat in enumerate(categories, start=1)}
        self.category_to_label = {cat: label for label, cat in self.label_to_category.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in categories]
        ids = sorted(self.coco.imgs)
        if transform == "train":
            ids = [i for i in ids if usable_annotations(self.coco.imgToAnns[i], self.coco.imgs[i]["width"],
                                                        self.coco.imgs[i]["height"])]
        self.ids, self.training = ids, transform == "train"
        self.transform = lsj_transform(image_size, scale_range) if self.training else v2.ToDtype(torch.float32,
                                                                                                  scale=True)
        self.collate_fn = collate_lists
        log.info("COCO %s: %d images (%d in the json), %d categories (transform %s)", split, len(self.ids),
                 len(self.coco.imgs), len(categories), transform)

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, image_id: int) -> Dict[str, Any]:
        """The tv_tensors target of ``image_id`` at the image's size (before any transform)."""
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        anns = usable_annotations(self.coco.imgToAnns[image_id], width, height)
        try:
            masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, height, width), np.uint8)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"'{self.annotation_file}': cannot decode a mask of image {image_id} ({err})") from None
        boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.category_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": image_id,
        }

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            raise DataError(f"cannot read COCO image '{path}' ({err}); {COCO_LAYOUT}") from None
        if (image.width, image.height) != (info["width"], info["height"]):
            raise DataError(f"'{path}' is {image.width}x{image.height}, '{self.annotation_file}' says "
                            f"{info['width']}x{info['height']}")
        image, target = self.transform(tv_tensors.Image(TF.pil_to_tensor(image)), self.target(image_id))
        plain = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        return image.as_subclass(torch.Tensor), plain

