"""ImageNet reader and the three image transforms (MAE pretraining, timm finetuning, eval).

Expected layout (the usual ImageFolder one; class names are the sorted folder names, shared by
both splits, so a class has the same index in ``train`` and ``val``)::

    <root>/train/<wnid>/<image>.JPEG
    <root>/val/<wnid>/<image>.JPEG

Unreadable images never stop an epoch: the sample is replaced by the next readable one, a warning
names the file (once per file, across DataLoader workers) and the file is recorded in a
shared-memory flag array, so ``num_skipped`` / ``skipped_files`` in the main process see what the
workers met; ``epoch_summary`` puts the count into the trainer's epoch records.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
from functools import lru_cache
from itertools import groupby, islice
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T
from torchvision.datasets.folder import DatasetFolder, pil_loader

from map_core.errors import DataError
from map_core.registry import DATASETS, check_kwargs

logger = logging.getLogger(__name__)

TRANSFORM_KINDS = ("pretrain", "finetune", "eval")

EXPECTED_LAYOUT = (
    "expected layout:\n"
    "  <root>/train/<class>/<image>.JPEG\n"
    "  <root>/val/<class>/<image>.JPEG\n"
    "(one folder per class in each split; any image format PIL reads)"
)

# PIL's exceptions for files it cannot decode (truncated, unknown format, bad header, too large).
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageFolderLayoutError(DataError):
    """The dataset folder does not have the expected split/class/image layout."""


@lru_cache(maxsize=None)
def image_extensions() -> frozenset:
    """Lower-case file extensions (with the dot) that PIL can open."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def build_image_transform(
    kind: str,
    input_size: int = 224,
    crop_pct: float = 0.875,
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
    reprob: float = 0.25,
    remode: str = "pixel",
    recount: int = 1,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    pretrain_scale: Tuple[float, float] = (0.2, 1.0),
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised float tensor (3, input_size, input_size).

    ``pretrain``: MAE's RandomResizedCrop(scale=pretrain_scale) + horizontal flip.
    ``finetune``: timm's training transform (RandAugment ``auto_augment``, random erasing).
    ``eval``: resize the short side to input_size / crop_pct, centre crop input_size.
    """
    mean, std = tuple(mean), tuple(std)
    if kind == "pretrain":
        return T.Compose([
            T.RandomResizedCrop(input_size, scale=tuple(pretrain_scale),
                                interpolation=T.InterpolationMode(interpolation)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])
    if kind == "finetune":
        return create_transform(
            input_size, is_training=True, auto_augment=auto_augment, interpolation=interpolation,
            re_prob=reprob, re_mode=remode, re_count=recount, mean=mean, std=std,
        )
    if kind == "eval":
        return create_transform(
            input_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
            mean=mean, std=std,
        )
    raise ValueError(f"unknown image transform '{kind}'; expected one of {', '.join(TRANSFORM_KINDS)}")


def _subfolders(path: str) -> List[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _is_image_file(path: str) -> bool:
    """A file PIL can open by its extension, and not hidden (no ``._x.JPEG`` resource forks)."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_extensions()


def scan_class_folder(folder: str, is_valid_file: Callable[[str], bool]) -> List[str]:
    """The valid files under ``folder`` in torchvision's order (sorted folders, sorted names), symlinks
    followed; a link to a folder above (a loop) or to one already read is skipped with a warning, so
    a loop cannot make the scan endless."""
    real = os.path.realpath(folder)
    seen = {_folder_id(up) for up in [real, *map(str, Path(real).parents)]}
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()  # of two links to one folder, the first by name is read
        for name in list(dirs):
            key = _folder_id(os.path.join(root, name))
            if key in seen:
                dirs.remove(name)
                logger.warning("skipping '%s': a link to a folder above it or already read (a symlink loop?)",
                               os.path.join(root, name))
            seen.add(key)
        found.append((root, sorted(f for f in files if is_valid_file(os.path.join(root, f)))))
    return [os.path.join(root, name) for root, names in sorted(found) for name in names]


def _folder_id(path: str) -> Tuple[int, int]:
    """(device, inode) of the folder ``path`` leads to."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


@DATASETS.register("ImageNet")
class ImageNet(DatasetFolder):
    """ImageNet-style image folder -> (image (3, input_size, input_size) float, label int).

    torchvision's ``DatasetFolder`` over ``root/split`` (``classes``, ``class_to_idx``, ``samples``
    (list of (path, label)), ``targets``; ``root`` is the split folder), read with its PIL loader.
    Classes are the sorted union of the class folders of every split present under ``root``, so
    ``train`` and ``val`` share the class index; ``max_per_class`` keeps the first files (by name)
    of each class. ``transform`` is one of ``pretrain`` | ``finetune`` | ``eval``; the other keyword
    arguments (``input_size``, ``crop_pct``, ...) are ``build_image_transform``'s. Raises ImageFolderLayoutError, with the expected layout, when
    ``root`` or the split is missing, has no class folders, or holds no image. The skip flags live
    in shared memory: the dataset pickles only while DataLoader workers start (fork, spawn or
    forkserver), not for ``deepcopy``.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        split: str = "train",
        transform: str = "eval",
        max_per_class: Optional[int] = None,
        **transform_args: Any,
    ):
        check_kwargs(build_image_transform, transform_args, f"ImageNet (the '{transform}' transform)")
        if not os.path.isdir(root):
            raise ImageFolderLayoutError(f"image dataset root '{root}' does not exist; {EXPECTED_LAYOUT}")
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            found = ", ".join(_subfolders(root)) or "nothing"
            raise ImageFolderLayoutError(
                f"split folder '{split_dir}' does not exist (found in '{root}': {found}); {EXPECTED_LAYOUT}"
            )
        self.split, self.max_per_class, self.transform_kind = split, max_per_class, transform
        super().__init__(
            split_dir, loader=pil_loader, is_valid_file=_is_image_file,
            transform=build_image_transform(transform, **transform_args),
        )
        # One byte per file in shared memory: forked / spawned DataLoader workers write to it and
        # the main process reads it (lock-free: concurrent writes all store the same value 1).
        self._skipped = multiprocessing.RawArray(ctypes.c_uint8, len(self.samples))
        logger.info("ImageNet %s: %d images, %d classes from '%s' (transform %s)",
                    split, len(self.samples), len(self.classes), root, transform)

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        """The sorted union of the class folders of ``directory`` and of its sibling train / val."""
        if not _subfolders(directory):
            raise ImageFolderLayoutError(f"'{directory}' has no class subfolders; {EXPECTED_LAYOUT}")
        root = os.path.dirname(os.path.normpath(directory))
        classes = set()
        for split_dir in {directory, os.path.join(root, "train"), os.path.join(root, "val")}:
            if os.path.isdir(split_dir):
                classes.update(_subfolders(split_dir))
        classes = sorted(classes)
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: Dict[str, int], extensions=None,
                     is_valid_file: Optional[Callable[[str], bool]] = None,
                     allow_empty: bool = False) -> List[Tuple[str, int]]:
        """The image files of every class folder (:func:`scan_class_folder`), then the first
        ``max_per_class`` of each class. A class folder without images is logged, not an error
        (``allow_empty`` is ignored)."""
        samples = [(path, index) for name, index in sorted(class_to_idx.items())
                   if os.path.isdir(os.path.join(directory, name))
                   for path in scan_class_folder(os.path.join(directory, name), is_valid_file or _is_image_file)]
        samples = [s for _, group in groupby(samples, key=lambda s: s[1]) for s in islice(group, self.max_per_class)]
        split_classes = _subfolders(directory)
        if not samples:
            raise ImageFolderLayoutError(
                f"no image files in the {len(split_classes)} class folders of '{directory}'; {EXPECTED_LAYOUT}"
            )
        found = {label for _, label in samples}
        empty = [name for name in split_classes if class_to_idx[name] not in found]
        if empty:
            logger.warning("%d class folders of '%s' hold no image: %s", len(empty), directory,
                           ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""))
        return samples

    @property
    def num_skipped(self) -> int:
        """How many distinct files were found unreadable so far (by any worker)."""
        return int(np.frombuffer(self._skipped, dtype=np.uint8).sum())

    @property
    def skipped_files(self) -> List[str]:
        """Paths of the files found unreadable so far (by any worker), in dataset order."""
        flags = np.frombuffer(self._skipped, dtype=np.uint8)
        return [self.samples[i][0] for i in np.flatnonzero(flags)]

    def epoch_summary(self, epoch: int) -> Dict[str, int]:
        """For the trainer's epoch record: ``{"skipped_images": n}`` and a warning naming the first
        files when n > 0 unreadable files were met so far; else ``{}``."""
        count = self.num_skipped
        if not count:
            return {}
        logger.warning("epoch %d: %d unreadable training files skipped so far (first: %s)",
                       epoch, count, ", ".join(self.skipped_files[:5]))
        return {"skipped_images": count}

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        """Sample ``index``, or the next readable one (wrapping around) when it cannot be read."""
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            path, label = self.samples[i]
            try:
                image = self.loader(path)
            except _UNREADABLE as err:
                if not self._skipped[i]:
                    self._skipped[i] = 1
                    logger.warning("skipping unreadable image '%s' (%s: %s)", path, type(err).__name__, err)
                continue
            return self.transform(image), label
        raise DataError(f"no readable image among the {n} files of '{self.root}' (first: {self.samples[0][0]})")
