"""ImageNet reader: layout scanning, the three transforms, unreadable files, layout errors."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from image.data import ImageFolderLayoutError, ImageNet, build_image_transform
from map_core.errors import DataError
from map_core.registry import DATASETS

CLASSES = ["n01", "n02", "n03"]
CORRUPT = os.path.join("train", "n02", "c_corrupt.JPEG")


def _write_image(path: str, seed: int, size=(40, 30)) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> str:
    """train: 3 classes x (2 PNG + 1 JPEG) + one corrupt JPEG in n02; val: 3 classes x 1 JPEG."""
    root = tmp_path_factory.mktemp("imagenet")
    seed = 0
    for split, names in (("train", ["a.png", "b.JPEG", "d.png"]), ("val", ["v.JPEG"])):
        for cls in CLASSES:
            os.makedirs(root / split / cls)
            for name in names:
                _write_image(str(root / split / cls / name), seed)
                seed += 1
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    (root / CORRUPT).write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return str(root)


def test_scan_length_labels_and_order(image_root):
    ds = ImageNet(root=image_root, split="train")
    val = ImageNet(root=image_root, split="val")
    assert ds.classes == val.classes == CLASSES
    assert len(ds) == 10 and len(val) == 3
    assert ds.targets == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert [os.path.basename(p) for p, _ in ds.samples[:4]] == ["a.png", "b.JPEG", "d.png", "a.png"]
    assert val.targets == [0, 1, 2]
    assert len(ImageNet(root=image_root, split="train", max_per_class=1)) == 3


def test_registered_and_built_from_config(image_root):
    ds = DATASETS.build({"NAME": "ImageNet", "root": image_root, "split": "val", "input_size": 32,
                         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    image, label = ds[2]
    assert image.shape == (3, 32, 32) and label == 2


@pytest.mark.parametrize("kind", ["pretrain", "finetune", "eval"])
def test_transform_shapes(image_root, kind):
    torch.manual_seed(0)
    ds = ImageNet(root=image_root, split="train", transform=kind, input_size=32)
    image, label = ds[0]
    assert isinstance(label, int) and label == 0
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)


def test_eval_transform_is_deterministic_centre_crop():
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[24:40, 24:40] = 255
    tf = build_image_transform("eval", input_size=32, crop_pct=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    out = tf(Image.fromarray(pixels))
    assert out.shape == (3, 32, 32)
    assert torch.equal(out, tf(Image.fromarray(pixels)))
    # crop_pct 0.5: the 64 px image is resized to 64 and the central 32 px (16 px white square) kept
    assert out[:, 16, 16].min() > 0.99 and out[:, 2, 2].max() < 0.01


def test_unknown_transform_names_choices(image_root):
    with pytest.raises(ValueError, match="pretrain, finetune, eval"):
        ImageNet(root=image_root, split="train", transform="train")


def test_transform_arguments_are_the_transforms_own(image_root):
    with pytest.raises(KeyError, match="unknown key 'input_sise' in ImageNet .*; did you mean 'input_size'"):
        ImageNet(root=image_root, split="train", input_sise=32)


def test_corrupt_file_skipped_and_counted(image_root, caplog):
    ds = ImageNet(root=image_root, split="train", input_size=32)
    corrupt_index = [p for p, _ in ds.samples].index(os.path.join(image_root, CORRUPT))
    assert ds.num_skipped == 0
    with caplog.at_level(logging.WARNING, logger="image.data"):
        image, label = ds[corrupt_index]
    assert image.shape == (3, 32, 32)
    assert label == ds.samples[corrupt_index + 1][1]
    assert ds.num_skipped == 1 and ds.skipped_files == [os.path.join(image_root, CORRUPT)]
    assert "c_corrupt.JPEG" in caplog.text
    ds[corrupt_index]
    assert ds.num_skipped == 1  # counted once per file


# the default start method (fork on Linux up to Python 3.13) with two workers; spawn (the default
# elsewhere) with one, as each spawned worker pays for importing torch
@pytest.mark.parametrize("context, workers", [(None, 2), pytest.param("spawn", 1, marks=pytest.mark.slow)])
def test_corrupt_file_counted_across_workers(image_root, context, workers):
    ds = ImageNet(root=image_root, split="train", input_size=32)
    loader = DataLoader(ds, batch_size=2, num_workers=workers, multiprocessing_context=context,
                        persistent_workers=True)
    for _ in range(2):
        images, labels = zip(*loader)
        assert sum(len(x) for x in labels) == len(ds)
        assert torch.cat(images).shape == (len(ds), 3, 32, 32)
    assert ds.num_skipped == 1
    assert ds.skipped_files == [os.path.join(image_root, CORRUPT)]


def test_missing_root_error(tmp_path):
    with pytest.raises(ImageFolderLayoutError, match="does not exist") as info:
        ImageNet(root=str(tmp_path / "nowhere"), split="train")
    assert "<root>/train/<class>/<image>.JPEG" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_split_error(tmp_path):
    os.makedirs(tmp_path / "val" / "n01")
    with pytest.raises(ImageFolderLayoutError, match="split folder .*train' does not exist") as info:
        ImageNet(root=str(tmp_path), split="train")
    assert "found in" in str(info.value) and "val" in str(info.value)
    assert "<root>/val/<class>/<image>.JPEG" in str(info.value)


def test_no_class_folders_error(tmp_path):
    os.makedirs(tmp_path / "train")
    _write_image(str(tmp_path / "train" / "loose.png"), 0)
    with pytest.raises(ImageFolderLayoutError, match="no class subfolders") as info:
        ImageNet(root=str(tmp_path), split="train")
    assert "<root>/train/<class>/<image>.JPEG" in str(info.value)


def test_no_images_error(tmp_path):
    os.makedirs(tmp_path / "train" / "n01")
    (tmp_path / "train" / "n01" / "readme.txt").write_text("x")
    with pytest.raises(ImageFolderLayoutError, match="no image files in the 1 class folders") as info:
        ImageNet(root=str(tmp_path), split="train")
    assert "<root>/train/<class>/<image>.JPEG" in str(info.value)


def test_all_unreadable_raises(tmp_path):
    os.makedirs(tmp_path / "val" / "n01")
    (tmp_path / "val" / "n01" / "x.JPEG").write_bytes(b"garbage")
    ds = ImageNet(root=str(tmp_path), split="val")
    with pytest.raises(DataError, match=r"no readable image .*x\.JPEG"):
        ds[0]


def test_class_union_hidden_files_and_empty_class_folders(tmp_path, caplog):
    for split, cls in (("train", "n01"), ("train", "n03"), ("val", "n02"), ("val", "n03")):
        os.makedirs(tmp_path / split / cls)
        _write_image(str(tmp_path / split / cls / "x.png"), 0)
    (tmp_path / "train" / "n01" / "._x.png").write_bytes(b"a macOS resource fork")
    os.makedirs(tmp_path / "train" / "n04")  # a class folder holding no image
    os.makedirs(tmp_path / "train" / ".cache")
    with caplog.at_level(logging.WARNING, logger="image.data"):
        ds = ImageNet(root=str(tmp_path), split="train")
    assert ds.classes == ["n01", "n02", "n03", "n04"]  # val's n02 keeps its index in train
    assert [(os.path.basename(p), label) for p, label in ds.samples] == [("x.png", 0), ("x.png", 2)]
    assert "1 class folders" in caplog.text and "n04" in caplog.text
    assert ImageNet(root=str(tmp_path), split="val").targets == [1, 2]
