"""Bad files for every reader, and pickles that ask for too much (issue 22: 7, 8, 10, 11, 15).

Each case writes one bad file in the real format and checks the reader's DataError names the file
and the real cause (never a truncated label, a TypeError or an endless scan).
"""
import logging
import os
import pickle
import struct
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from PIL import Image

from image.data import ImageNet
from map_core.engine.logger import ExperimentLogger
from map_core.errors import DataError
from map_core.safe_pickle import PickleLimitError, restricted_load
from pointcloud.data import ModelNet, ModelNetFewShot, ScanObjectNN, ShapeNet
from tests.test_point_data import cloud, write_h5, write_modelnet, write_shapenet

DAT = "ModelNet/modelnet40_normal_resampled/modelnet40_train_16pts_fps.dat"
SCAN = "ScanObjectNN/main_split/training_objectdataset_augmentedrot_scale75.h5"
NPY = "ShapeNet55-34/shapenet_pc/02691156-b2.npy"


def write_dat(root: Path, change: Callable[[list, list], list]) -> None:
    """A 40-shape ModelNet .dat of 16-point clouds, changed by ``change(clouds, labels)``."""
    clouds = [cloud(i, 16, 6) for i in range(40)]
    labels = [np.array([i], dtype=np.int32) for i in range(40)]
    with open(root / DAT, "wb") as f:
        pickle.dump(change(clouds, labels), f)


def set_item(items: list, index: int, value) -> list:
    items[index] = value
    return items


def modelnet(root: Path):
    return ModelNet(root / "ModelNet/modelnet40_normal_resampled", npoints=16, subset="train")


def shapenet(root: Path):
    base = root / "ShapeNet55-34"
    return ShapeNet(base / "ShapeNet-55", base / "shapenet_pc", npoints=256).load(1)


def scanobjectnn(root: Path):
    return ScanObjectNN(root / "ScanObjectNN", "hardest", "train")


def write_scan(root: Path, data=None, label=(3, 0, 14, 7)) -> None:
    write_h5(root / SCAN, np.stack([cloud(i, 2048) for i in range(4)]) if data is None else data, np.array(label))


def scan_with_group(root: Path) -> None:
    write_scan(root)
    with h5py.File(root / SCAN, "a") as f:
        del f["data"]
        f.create_group("data").create_dataset("points", data=np.zeros((4, 2048, 3)))


def looping_symlink(root: Path) -> None:
    path = root / NPY
    path.unlink()
    path.symlink_to(path.name)  # a link to itself: a loop


def fewshot_fraction(root: Path) -> None:
    folder = root / "ModelNetFewshot" / "5way_10shot"
    folder.mkdir(parents=True)
    items = {s: [(cloud(i, 50), [0, 1.5, 2][i], i) for i in range(3)] for s in ("train", "test")}
    with open(folder / "0.pkl", "wb") as f:
        pickle.dump(items, f)


# (case, write the bad file into the data root, read it, what the error says)
CASES = [
    ("dat: string clouds", lambda r: write_dat(r, lambda c, l: [set_item(c, 2, np.full((16, 6), "x")), l]),
     modelnet, r"\.dat, item 2: expected numeric coordinates, got values of type <U1"),
    ("dat: empty label", lambda r: write_dat(r, lambda c, l: [c, set_item(l, 3, np.array([], dtype=np.int32))]),
     modelnet, r"\.dat, label 3: expected one whole-number label, got array\(\[\]"),
    ("dat: a pair of ints", lambda r: write_dat(r, lambda c, l: [c, set_item(l, 3, np.array([1, 2]))]),
     modelnet, r"\.dat, label 3: expected one whole-number label, got array\(\[1, 2\]\)"),
    ("dat: NaN label", lambda r: write_dat(r, lambda c, l: [c, set_item(l, 5, np.array([np.nan]))]),
     modelnet, r"fps\.dat, label 5: expected one whole-number label, got array\(\[nan\]\)"),
    ("dat: fractional label", lambda r: write_dat(r, lambda c, l: [c, set_item(l, 5, np.array([2.5]))]),
     modelnet, r"fps\.dat, label 5: expected one whole-number label, got array\(\[2\.5\]\)"),
    ("dat: not a pair of lists", lambda r: write_dat(r, lambda c, l: [5, l]),
     modelnet, r"\.dat: expected a pickled pair \[list of point arrays, list of labels\], got \[int, list\]"),
    ("dat: 35 bytes asking for 1.5 GB", lambda r: (r / DAT).write_bytes(
        b"c__builtin__\nbytearray\n(J" + struct.pack("<i", 1_500_000_000) + b"tR."),
     modelnet, r"\.dat: cannot be read as a data pickle .*asks for 1,500,000,000 bytes \(bytearray"),
    ("ModelNet names: not UTF-8", lambda r: (r / "ModelNet/modelnet40_normal_resampled/modelnet40_shape_names.txt")
     .write_bytes(b"airplane\n\xe9t\xe9\n"), modelnet,
     r"modelnet40_shape_names\.txt: not UTF-8 text \(byte 0xe9 at offset 9\)"),
    ("npy: string cloud", lambda r: np.save(r / NPY, np.full((1100, 3), "x")),
     shapenet, r"02691156-b2\.npy: expected numeric coordinates, got values of type <U1"),
    ("npy: a looping symlink", looping_symlink,
     shapenet, r"ShapeNet point file .*02691156-b2\.npy is a symlink that leads nowhere \(a loop of links"),
    ("ShapeNet list: not UTF-8", lambda r: (r / "ShapeNet55-34/ShapeNet-55/train.txt").write_bytes(b"\xff\xfe0\x00"),
     shapenet, r"train\.txt: not UTF-8 text \(byte 0xff at offset 0\)"),
    ("h5: fractional labels", lambda r: write_scan(r, label=[3.0, 0.5, 14.0, 7.0]),
     scanobjectnn, r"\.h5, 'label': label 0\.5 at index 1 is not a whole number \(1 such labels\)"),
    ("h5: data stored as a group", scan_with_group,
     scanobjectnn, r"\.h5: 'data' is an h5 group, expected a dataset"),
    ("h5: data as strings", lambda r: write_scan(r, data=np.full((4, 2048, 3), b"x")),
     scanobjectnn, r"\.h5: 'data' holds values of type \|S1, expected numbers"),
    ("few-shot pkl: fractional label", fewshot_fraction,
     lambda r: ModelNetFewShot(r / "ModelNetFewshot", 5, 10, 0, "train"),
     r"0\.pkl, 'train' item 1, label: expected one whole-number label, got 1\.5"),
]


@pytest.mark.parametrize("case, write, read, message", CASES, ids=[c[0] for c in CASES])
def test_bad_file_is_named_with_its_cause(tmp_path: Path, case, write, read, message) -> None:
    root = tmp_path / "data"
    write_modelnet(root)
    write_shapenet(root)
    write_scan(root)
    write(root)
    with pytest.raises(DataError, match=message) as caught:
        read(root)
    assert "\n" not in str(caught.value), case


# ---------------------------------------------------------------- the restricted unpickler's caps

def numpy_pickle_with_object_flags() -> bytes:
    """A void array whose dtype state sets numpy's object flags: numpy would read its bytes as pointers."""
    data = pickle.dumps(np.zeros(2, dtype="V8"), protocol=2)
    assert b"K\x08K\x01K\x00t" in data  # the dtype state (..., elsize 8, alignment 1, flags 0)
    return data.replace(b"K\x08K\x01K\x00t", b"K\x08K\x01K?t")


BIG = struct.pack("<i", 1_500_000_000)
TOO_MUCH = [  # (case, pickle bytes, error type, message)
    ("bytearray(n)", b"c__builtin__\nbytearray\n(J" + BIG + b"tR.", PickleLimitError,
     r"asks for 1,500,000,000 bytes \(bytearray"),
    ("bytes(n)", b"cbuiltins\nbytes\n(J" + BIG + b"tR.", PickleLimitError, r"asks for 1,500,000,000 bytes \(bytes"),
    ("numpy.ndarray(shape)", b"cnumpy\nndarray\n((J" + BIG + b"tS'f8'\ntR.", PickleLimitError,
     r"asks for 12,000,000,000 bytes \(numpy\.ndarray"),
    ("_reconstruct(shape)", b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(J" + BIG + b"tC\x01btR.",
     PickleLimitError, r"asks for 1,500,000,000 bytes \(numpy _reconstruct"),
    ("a length past the end", b"\x80\x05\x96" + struct.pack("<Q", 1_500_000_000) + b"abc.", pickle.UnpicklingError,
     r"a bytearray of 1,500,000,000 bytes, longer than the rest of the file"),
    ("bytes past the end", b"\x80\x04\x8e" + struct.pack("<Q", 1_500_000_000) + b"abc.", pickle.UnpicklingError,
     r"not a readable pickle"),
    ("object dtype by its state", numpy_pickle_with_object_flags(), pickle.UnpicklingError,
     r"refused an object dtype"),
    ("object array", pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), pickle.UnpicklingError,
     r"refused an object dtype \(object\)"),
]


@pytest.mark.parametrize("case, data, error, message", TOO_MUCH, ids=[c[0] for c in TOO_MUCH])
def test_unpickler_refuses_before_building(tmp_path: Path, case, data, error, message) -> None:
    path = tmp_path / "evil.dat"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(error, match=rf"^{tmp_path}/evil\.dat: .*{message}"):
        restricted_load(path)
    assert time.perf_counter() - start < 2.0, case  # nothing of the asked size was allocated and filled


def test_unpickler_cap_is_the_files_size_plus_slack(tmp_path: Path) -> None:
    path = tmp_path / "small.dat"
    path.write_bytes(b"c__builtin__\nbytearray\n(J" + struct.pack("<i", 4096) + b"tR.")
    assert restricted_load(path) == bytearray(4096)  # within the default cap
    with pytest.raises(PickleLimitError, match=r"beyond the cap of 1,000 bytes"):
        restricted_load(path, max_bytes=1000)
    arrays = [cloud(i, 64, 6) for i in range(50)]  # real data: its bytes are in the file, within any cap
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps([arrays, [np.array([i]) for i in range(50)]], protocol=protocol))
        loaded = restricted_load(path, encoding="latin1", max_bytes=path.stat().st_size)
        assert all(np.array_equal(a, b) for a, b in zip(loaded[0], arrays))


# ---------------------------------------------------------------- ImageNet folders

def write_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / name)


def test_imagenet_symlink_loops_end_the_scan(tmp_path: Path, caplog) -> None:
    write_images(tmp_path / "train" / "a", ["0.png", "1.png"])
    write_images(tmp_path / "train" / "a" / "sub", ["3.png"])
    write_images(tmp_path / "train" / "b", ["2.png"])
    for i in range(3):  # three links back up to train/: torchvision's walk would never end
        (tmp_path / "train" / "a" / f"up{i}").symlink_to("..", target_is_directory=True)
    (tmp_path / "train" / "a" / "sub" / "loop").symlink_to(tmp_path / "train" / "a", target_is_directory=True)
    (tmp_path / "train" / "b" / "root").symlink_to("/", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="image.data"):
        ds = ImageNet(str(tmp_path), "train")
    found = [Path(p).relative_to(tmp_path / "train").as_posix() for p, _ in ds.samples]
    assert found == ["a/0.png", "a/1.png", "a/sub/3.png", "b/2.png"] and ds.targets == [0, 0, 0, 1]
    skipped = sorted(r.args[0] for r in caplog.records if "(a symlink loop?)" in r.getMessage())
    assert [Path(p).relative_to(tmp_path / "train").as_posix() for p in skipped] == [
        "a/sub/loop", "a/up0", "a/up1", "a/up2", "b/root"]


def test_unreadable_non_utf8_image_name_is_logged_to_log_txt(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "a", ["0.png"])
    bad = os.fsdecode(b"\xff\xfe.png")  # a name that is not UTF-8 (surrogate escapes in Python)
    (tmp_path / "train" / "a" / bad).write_bytes(b"not an image")
    ds = ImageNet(str(tmp_path), "train")
    records = ExperimentLogger(tmp_path / "exp", enabled=True)
    try:
        ds[[path for path, _ in ds.samples].index(str(tmp_path / "train" / "a" / bad))]  # skipped, then 0.png
    finally:
        records.close()
    text = (tmp_path / "exp" / "log.txt").read_text(encoding="utf-8")
    assert "skipping unreadable image" in text and "\\udcff\\udcfe.png" in text
    assert ds.num_skipped == 1
