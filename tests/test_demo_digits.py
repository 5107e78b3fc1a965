"""Bundled demo data (scikit-learn digits as images and 3D clouds): determinism, formats, splits."""
import importlib.util
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from image.data import ImageNet

_spec = importlib.util.spec_from_file_location(
    "demo_digits", Path(__file__).resolve().parents[1] / "datasets" / "demo_digits.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

LIMIT = 3  # digits per class and split in the test builds


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images, d.target


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return demo.build_demo_data(tmp_path_factory.mktemp("a") / "demo", seed=0, limit_per_class=LIMIT)


def _files(root: Path):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_split_sizes_and_class_balance(digits):
    _, labels = digits
    train, test = demo.split_indices(labels, seed=0)
    assert (len(train), len(test)) == (1347, 450)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    fraction = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(fraction - 0.25) < 0.01)
    assert np.array_equal(test, demo.split_indices(labels, seed=0)[1])
    assert not np.array_equal(test, demo.split_indices(labels, seed=1)[1])


def test_manifest(build):
    manifest = json.loads(build["manifest"].read_text())
    assert manifest["version"] == demo.VERSION and manifest["seed"] == 0
    assert manifest["split_sizes"] == {"train": 10 * LIMIT, "test": 10 * LIMIT}
    assert manifest["class_counts"]["train"] == [LIMIT] * 10
    assert manifest["num_points"] == 1024


def test_images_readable_by_pil_and_imagenet_reader(build, digits):
    files = _files(build["images"])
    assert len(files) == 20 * LIMIT
    for path in files[:5]:
        with Image.open(path) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
            pixels = np.asarray(im)
        assert np.array_equal(pixels[..., 0], pixels[..., 2])
    images, labels = digits
    index = int(files[0].stem)
    assert files[0].parent.name == f"digit_{labels[index]}"
    assert pixels.max() > 200  # 0..16 ink mapped to 0..255
    val = ImageNet(root=str(build["images"]), split="val", input_size=32, crop_pct=1.0)
    assert val.classes == [f"digit_{c}" for c in range(10)] and len(val) == 10 * LIMIT
    image, label = val[LIMIT]
    assert image.shape == (3, 32, 32) and label == 1


def test_scanobjectnn_h5(build):
    folder = build["scanobjectnn"] / "main_split"
    for name in ("training_objectdataset.h5", "test_objectdataset.h5"):
        with h5py.File(folder / name, "r") as f:
            assert set(f.keys()) == {"data", "label"}
            assert f["data"].dtype == np.float32 and f["data"].shape == (10 * LIMIT, 1024, 3)
            assert f["label"].dtype == np.int64 and f["label"].shape == (10 * LIMIT,)
            assert np.array_equal(np.bincount(f["label"][:]), [LIMIT] * 10)


def test_shapenet_lists_match_files(build):
    listed = []
    for split in ("train", "test"):
        lines = (build["shapenet_list"] / f"{split}.txt").read_text().splitlines()
        assert len(lines) == 10 * LIMIT
        listed += lines
    assert sorted(listed) == sorted(p.name for p in build["shapenet_pc"].iterdir())
    assert {name.split("-")[0] for name in listed} == {f"{c:08d}" for c in range(10)}
    cloud = np.load(build["shapenet_pc"] / listed[0])
    assert cloud.dtype == np.float32 and cloud.shape == (1024, 3)


def test_points_normalised(build):
    with h5py.File(build["scanobjectnn"] / "main_split" / "test_objectdataset.h5", "r") as f:
        clouds = f["data"][:]
    np.testing.assert_allclose(np.linalg.norm(clouds, axis=2).max(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clouds.mean(axis=1), 0.0, atol=1e-5)


def test_same_digit_same_cloud_in_both_formats(build):
    names = (build["shapenet_list"] / "train.txt").read_text().splitlines()
    with h5py.File(build["scanobjectnn"] / "main_split" / "training_objectdataset.h5", "r") as f:
        assert np.array_equal(f["data"][4], np.load(build["shapenet_pc"] / names[4]))


def test_real_point_readers_read_it(build):
    shapenet = pytest.importorskip("pointcloud.data.shapenet")
    scanobjectnn = pytest.importorskip("pointcloud.data.scanobjectnn")
    pretrain = shapenet.ShapeNet(data_path=build["shapenet_list"], pc_path=build["shapenet_pc"],
                                 subset="train", npoints=1024)
    assert len(pretrain) == 10 * LIMIT and pretrain.classes == [f"{c:08d}" for c in range(10)]
    assert pretrain[0][0].shape == (1024, 3)
    finetune = scanobjectnn.ScanObjectNN(root=build["scanobjectnn"], variant="objbg", subset="test")
    points, label = finetune[-1]
    last = (build["shapenet_list"] / "test.txt").read_text().splitlines()[-1]
    assert len(finetune) == 10 * LIMIT and points.shape == (1024, 3)
    assert int(label) == int(last.split("-")[0])  # same digits, same order in both formats


def test_one_is_elongated_vertically(digits):
    images, labels = digits

    def aspect(index):
        points = demo.extrude_digit(images[index], np.random.default_rng([0, index]))
        extent = points.max(axis=0) - points.min(axis=0)
        return extent[1] / extent[0]

    ones = [aspect(i) for i in np.flatnonzero(labels == 1)[:40]]
    zeros = [aspect(i) for i in np.flatnonzero(labels == 0)[:40]]
    assert np.mean(np.array(ones) > 1.0) > 0.9
    assert np.median(ones) > np.median(zeros)


def test_rotation_is_about_vertical_axis(build, digits):
    """The written cloud's y column is the unrotated digit's, so the digit stays upright."""
    images, _ = digits
    name = (build["shapenet_list"] / "test.txt").read_text().splitlines()[0]
    index = int(name.split("digit")[1].split(".")[0])
    upright = demo.normalize_points(demo.extrude_digit(images[index], np.random.default_rng([0, index])))
    written = np.load(build["shapenet_pc"] / name)
    np.testing.assert_allclose(written[:, 1], upright[:, 1], atol=1e-5)
    assert not np.allclose(written[:, 0], upright[:, 0], atol=1e-2)


def test_deterministic_across_folders(build, tmp_path):
    other = demo.build_demo_data(tmp_path / "b", seed=0, limit_per_class=LIMIT)
    a, b = _files(build["root"]), _files(other["root"])
    assert [p.relative_to(build["root"]) for p in a] == [p.relative_to(other["root"]) for p in b]
    for pa, pb in zip(a, b):  # PNG, npy, txt, h5 (written without timestamps) and the manifest
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_idempotent_and_atomic(tmp_path):
    out = tmp_path / "demo"
    demo.build_demo_data(out, limit_per_class=1)
    before = {p: p.stat().st_mtime_ns for p in _files(out)}
    assert demo.build_demo_data(out, limit_per_class=1)["root"] == out.resolve()
    assert {p: p.stat().st_mtime_ns for p in _files(out)} == before
    assert os.listdir(tmp_path) == ["demo"]  # no temporary folder left behind
    manifest_inode = (out / "manifest.json").stat().st_ino
    demo.build_demo_data(out, limit_per_class=2)  # other options: rebuilt in place
    assert (out / "manifest.json").stat().st_ino != manifest_inode
    assert json.loads((out / "manifest.json").read_text())["split_sizes"]["train"] == 20
    assert os.listdir(tmp_path) == ["demo"]


def test_refuses_to_replace_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo-digits build"):
        demo.build_demo_data(tmp_path, limit_per_class=1, force=True)
    assert (tmp_path / "mine.txt").exists()


def test_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["demo_digits.py", "--out", str(tmp_path / "cli"), "--limit-per-class", "1"])
    demo.main()
    paths = json.loads(capsys.readouterr().out)
    assert Path(paths["manifest"]).is_file()


def test_part_labels_in_shapenetpart_layout(build):
    """The same clouds with parts 3c (bottom), 3c+1 (middle), 3c+2 (top third of the height), read by
    the real reader with the demo config's category_parts."""
    from map_core.config import load_config
    from pointcloud.data import ShapeNetPart

    root = build["shapenetpart"]
    config = Path(__file__).resolve().parents[1] / "configs" / "demo" / "pointmap_partseg.yaml"
    parts = load_config(config)["dataset"]["train"]["category_parts"]
    train = ShapeNetPart(root=root, split="trainval", npoints=64, category_parts=parts)
    assert train.categories == [f"digit_{c}" for c in range(10)] and len(train) == 10 * LIMIT
    assert train.category_parts[4] == [12, 13, 14]
    assert len(ShapeNetPart(root=root, split="test", npoints=64, category_parts=parts)) == 10 * LIMIT
    assert json.loads((root / "train_test_split" / "shuffled_val_file_list.json").read_text()) == []
    name = (build["shapenet_list"] / "train.txt").read_text().splitlines()[7]
    taxonomy, model = name[:-len(".npy")].split("-")
    rows = np.loadtxt(root / taxonomy / f"{model}.txt")
    cloud = np.load(build["shapenet_pc"] / name)
    np.testing.assert_allclose(rows[:, :3], cloud, atol=1e-5)
    assert (rows[:, 3:6] == 0).all()
    c, y, part = int(taxonomy), cloud[:, 1], rows[:, 6].astype(int)
    assert set(part) == {3 * c, 3 * c + 1, 3 * c + 2}
    bands = [y[part == 3 * c + k] for k in range(3)]
    assert bands[0].max() < bands[1].min() and bands[1].max() < bands[2].min()  # bottom, middle, top
    third = (y.max() - y.min()) / 3
    assert abs(bands[0].max() - (y.min() + third)) < 0.05 and abs(bands[2].min() - (y.max() - third)) < 0.05
