"""Point-cloud readers on tiny files in the real formats, bad inputs, restricted unpickling, transforms,
and the data-preparation scripts."""
import importlib.util
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pointcloud  # noqa: F401  (registers the datasets)
from map_core.registry import DATASETS
from map_core.safe_pickle import restricted_load
from pointcloud.data import DataError, ModelNet, ModelNetFewShot, ScanObjectNN, ShapeNet
from pointcloud.data.common import normalize
from pointcloud.data.transforms import fps_pool, random_subset, rotate_about_up, scale_and_translate

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "night_stand"] + [f"class{i:02d}" for i in range(38)]
SCAN_FILES = ["main_split/training_objectdataset_augmentedrot_scale75.h5",
              "main_split/test_objectdataset_augmentedrot_scale75.h5",
              "main_split/training_objectdataset.h5", "main_split/test_objectdataset.h5",
              "main_split_nobg/training_objectdataset.h5", "main_split_nobg/test_objectdataset.h5"]


def cloud(seed: int, n: int, c: int = 3) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, c)) * 3 + 5).astype(np.float32)


def write_shapenet(root: Path) -> None:
    base = root / "ShapeNet55-34"
    (base / "ShapeNet-55").mkdir(parents=True)
    (base / "shapenet_pc").mkdir()
    names = {"train": ["04379243-a1.npy", "02691156-b2.npy", "04379243-c3.npy"], "test": ["03001627-d4.npy"]}
    for split, files in names.items():
        (base / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(files) + "\n")
        for i, name in enumerate(files):
            np.save(base / "shapenet_pc" / name, cloud(i, 1100))


def write_modelnet(root: Path) -> Path:
    base = root / "ModelNet" / "modelnet40_normal_resampled"
    base.mkdir(parents=True)
    (base / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    for split, offset in (("train", 1), ("test", 2)):
        ids = [f"{c}_{offset:04d}" for c in CLASSES]
        (base / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
        for k, shape_id in enumerate(ids):
            (base / CLASSES[k]).mkdir(exist_ok=True)
            np.savetxt(base / CLASSES[k] / f"{shape_id}.txt", cloud(k + 100 * offset, 40, 6), delimiter=",", fmt="%.6f")
    return base


def write_fewshot(root: Path) -> None:
    for way in (5, 10):
        for shot in (10, 20):
            folder = root / "ModelNetFewshot" / f"{way}way_{shot}shot"
            folder.mkdir(parents=True)
            for fold in range(10):
                items = {s: [(cloud(i, 50), i % way, i) for i in range(3)] for s in ("train", "test")}
                with open(folder / f"{fold}.pkl", "wb") as f:
                    pickle.dump(items, f)


def write_h5(path: Path, data: np.ndarray, label: np.ndarray, keys=("data", "label")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(keys[0], data=data)
        f.create_dataset(keys[1], data=label)


def write_scanobjectnn(root: Path) -> None:
    for k, name in enumerate(SCAN_FILES):
        data = np.stack([cloud(10 * k + i, 2048) for i in range(4)])
        write_h5(root / "ScanObjectNN" / name, data, np.array([3, 0, 14, 7 + k]))


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_shapenet(root)
    write_modelnet(root)
    write_fewshot(root)
    write_scanobjectnn(root)
    (root / "imagenet" / "train" / "n01440764").mkdir(parents=True)
    (root / "imagenet" / "val" / "n01440764").mkdir(parents=True)
    return root


def assert_normalised(points: torch.Tensor) -> None:
    assert torch.allclose(points[:, :3].mean(0), torch.zeros(3), atol=1e-5)
    assert math.isclose(points[:, :3].norm(dim=1).max().item(), 1.0, rel_tol=1e-5)


# ---------------------------------------------------------------- readers

def test_all_readers_are_registered():
    assert {"ShapeNet", "ModelNet", "ModelNetFewShot", "ScanObjectNN"} <= set(DATASETS.names())


def test_shapenet(data_root: Path):
    base = data_root / "ShapeNet55-34"
    ds = DATASETS.build({"NAME": "ShapeNet", "data_path": str(base / "ShapeNet-55"),
                         "pc_path": str(base / "shapenet_pc"), "npoints": 256})
    assert len(ds) == 3
    points, label = ds[1]
    assert points.shape == (256, 3) and points.dtype == torch.float32 and label.dtype == torch.int64
    assert_normalised(points)
    # sorted taxonomy ids of train + test: 02691156, 03001627, 04379243
    assert [ds[i][1].item() for i in range(3)] == [2, 0, 2]
    torch.manual_seed(0)
    subset = torch.randperm(1100)[:256].numpy()  # Point-MAE: a random permutation, then the first npoints
    expected = normalize(np.load(base / "shapenet_pc" / "02691156-b2.npy")[subset])
    torch.manual_seed(0)
    np.testing.assert_allclose(ds[1][0].numpy(), expected, atol=1e-6)
    whole = ShapeNet(base / "ShapeNet-55", base / "shapenet_pc", npoints=256, whole=True)
    assert len(whole) == 4 and whole.names[0] == "03001627-d4.npy" and whole[0][1].item() == 1


def test_modelnet_txt_and_normals(data_root: Path):
    base = data_root / "ModelNet" / "modelnet40_normal_resampled"
    ds = ModelNet(base, npoints=32, subset="test")
    assert len(ds) == 40
    points, label = ds[1]
    raw = np.loadtxt(base / "night_stand" / "night_stand_0002.txt", delimiter=",", dtype=np.float32)[:32]
    assert label.item() == 1 and points.shape == (32, 3)
    np.testing.assert_allclose(points.numpy(), normalize(raw[:, :3]), atol=1e-6)  # test: first rows, in order
    with_normals, _ = ModelNet(base, npoints=32, subset="test", use_normals=True)[1]
    np.testing.assert_allclose(with_normals[:, 3:].numpy(), raw[:, 3:])


def test_modelnet_reads_preprocessed_dat(data_root: Path):
    base = data_root / "ModelNet" / "modelnet40_normal_resampled"
    clouds = [cloud(500 + i, 16, 6) for i in range(40)]
    labels = [np.array([(i * 7) % 40], dtype=np.int32) for i in range(40)]
    with open(base / "modelnet40_train_16pts_fps.dat", "wb") as f:
        pickle.dump([clouds, labels], f)
    torch.manual_seed(0)
    ds = ModelNet(base, npoints=16, subset="train")
    points, label = ds[3]
    assert label.item() == 21 and points.shape == (16, 3)
    expected = normalize(clouds[3][:, :3])
    assert sorted(map(tuple, np.round(points.numpy(), 5))) == sorted(map(tuple, np.round(expected, 5)))
    assert not np.allclose(points.numpy(), expected)  # train: point order shuffled
    txt = ModelNet(base, npoints=16, subset="train", process_data=False)
    assert txt[3][1].item() == 3  # without process_data the txt files (and list labels) are used


def test_fewshot(data_root: Path):
    root = data_root / "ModelNetFewshot"
    ds = DATASETS.build({"NAME": "ModelNetFewShot", "data_path": str(root), "way": 10, "shot": 20,
                         "fold": 9, "subset": "test"})
    points, label = ds[2]
    assert len(ds) == 3 and label.item() == 2 and points.shape == (50, 3)
    np.testing.assert_allclose(points.numpy(), normalize(cloud(2, 50)), atol=1e-6)
    assert ModelNetFewShot(root, subset="train", npoints=20)[0][0].shape == (20, 3)
    os.rename(root / "5way_10shot", root / "5way10shot")  # the spelling without underscore works too
    assert len(ModelNetFewShot(root, way=5, shot=10, fold=0)) == 3


@pytest.mark.parametrize("variant", ["hardest", "objbg", "objonly"])
def test_scanobjectnn(data_root: Path, variant: str):
    ds = DATASETS.build({"NAME": "ScanObjectNN", "root": str(data_root / "ScanObjectNN"), "variant": variant,
                         "subset": "test"})
    points, label = ds[2]
    k = {"hardest": 1, "objbg": 3, "objonly": 5}[variant]
    assert len(ds) == 4 and points.shape == (2048, 3) and label.item() == 14
    np.testing.assert_array_equal(points.numpy(), cloud(10 * k + 2, 2048))  # not normalised, in order


# ---------------------------------------------------------------- bad inputs

def test_missing_list_file_names_it_and_shows_layout(tmp_path: Path):
    (tmp_path / "pc").mkdir()
    with pytest.raises(DataError, match=r"(?s)ShapeNet list not found: .*train\.txt.*Expected layout"):
        ShapeNet(tmp_path / "lists", tmp_path / "pc")


def test_missing_point_file(data_root: Path):
    base = data_root / "ModelNet" / "modelnet40_normal_resampled"
    os.remove(base / "airplane" / "airplane_0001.txt")
    with pytest.raises(DataError, match="airplane_0001.txt"):
        ModelNet(base, npoints=16)[0]


def test_h5_with_wrong_keys(tmp_path: Path):
    write_h5(tmp_path / "main_split" / "test_objectdataset.h5", np.zeros((2, 8, 3)), np.zeros(2), ("points", "y"))
    with pytest.raises(DataError, match=r"missing h5 dataset\(s\) \['data', 'label'\]; found keys \['points', 'y'\]"):
        ScanObjectNN(tmp_path, variant="objbg", subset="test")


def test_nan_coordinates(data_root: Path, tmp_path: Path):
    bad = cloud(0, 1100)
    bad[37, 1] = np.nan
    path = data_root / "ShapeNet55-34" / "shapenet_pc" / "04379243-a1.npy"
    np.save(path, bad)
    ds = ShapeNet(data_root / "ShapeNet55-34" / "ShapeNet-55", path.parent)
    with pytest.raises(DataError, match=r"04379243-a1\.npy: non-finite .* index 37"):
        ds[0]
    data = np.zeros((3, 8, 3), np.float32)
    data[2, 5, 0] = np.inf
    write_h5(tmp_path / "main_split_nobg" / "training_objectdataset.h5", data, np.zeros(3))
    with pytest.raises(DataError, match="cloud 2, point 5"):
        ScanObjectNN(tmp_path, variant="objonly")


def test_too_few_points(data_root: Path):
    ds = ShapeNet(data_root / "ShapeNet55-34" / "ShapeNet-55", data_root / "ShapeNet55-34" / "shapenet_pc",
                  npoints=2048)
    with pytest.raises(DataError, match="has 1100 points, fewer than the 2048 asked for"):
        ds[0]


# ---------------------------------------------------------------- restricted unpickling

class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_restricted_load_refuses_code(tmp_path: Path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": [_Exploit(target)]}))
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl: refused to load global '(posix|os|nt)\.system'"):
        restricted_load(path)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_load_accepts_data(tmp_path: Path, protocol: int):
    value = {"train": [(np.arange(6, dtype=np.float32).reshape(2, 3), np.int32(4), "x")], "n": [1, 2.5, None],
             "s": {1, 2}, "b": b"\x00\x01", "c": 1 + 2j, "i": np.array([7], dtype=np.int64)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    loaded = restricted_load(path)
    np.testing.assert_array_equal(loaded["train"][0][0], value["train"][0][0])
    assert loaded["train"][0][1] == 4 and loaded["n"] == [1, 2.5, None] and loaded["s"] == {1, 2}
    assert loaded["b"] == b"\x00\x01" and loaded["c"] == 1 + 2j and loaded["i"].dtype == np.int64
    with open(path, "rb") as f:
        assert restricted_load(f)["train"][0][2] == "x"


# ---------------------------------------------------------------- transforms

def test_scale_and_translate_bounds_and_seed():
    base = torch.zeros(64, 2, 3)
    base[:, 1] = 1.0  # point 0 -> the shift t, point 1 -> s + t
    out = scale_and_translate(base, generator=torch.Generator().manual_seed(0))
    shift, scale = out[:, 0], out[:, 1] - out[:, 0]
    assert shift.abs().max() <= 0.2 and scale.min() >= 2 / 3 - 1e-6 and scale.max() <= 1.5 + 1e-6
    assert scale.std(0).min() > 0.05  # per sample and per axis, not one value
    again = scale_and_translate(base, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with_normals = torch.cat([base, torch.ones(64, 2, 3)], -1)
    assert torch.equal(scale_and_translate(with_normals)[..., 3:], torch.ones(64, 2, 3))


def test_rotate_about_up():
    points = torch.randn(8, 100, 3, generator=torch.Generator().manual_seed(1))
    out = rotate_about_up(points, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out.norm(dim=-1), points.norm(dim=-1), atol=1e-5)
    assert torch.equal(out[..., 1], points[..., 1])
    # angle ~ U[0, 2 pi); the row vector (1, 0, 0) maps to (cos a, 0, sin a) as in PointcloudRotate
    angle = torch.rand(8, generator=torch.Generator().manual_seed(2)) * 2 * math.pi
    unit = rotate_about_up(torch.tensor([1.0, 0.0, 0.0]).expand(8, 1, 3), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(unit[:, 0], torch.stack([angle.cos(), torch.zeros(8), angle.sin()], -1), atol=1e-6)


def test_training_input_is_a_random_subset_of_the_fps_pool():
    """Mamba3D's training input (the point classification task's preprocess): FPS to the pool,
    then a random subset of it."""
    points = torch.randn(2, 1500, 3, generator=torch.Generator().manual_seed(3))
    pool = fps_pool(points, 1024)
    assert pool.shape == (2, 1200, 3)
    out = random_subset(pool, 1024, generator=torch.Generator().manual_seed(4))
    assert out.shape == (2, 1024, 3)
    for b in range(2):
        rows = {tuple(p) for p in points[b].tolist()}
        chosen = [tuple(p) for p in out[b].tolist()]
        assert len(set(chosen)) == 1024 and set(chosen) <= {tuple(p) for p in pool[b].tolist()} <= rows
    assert fps_pool(points[:, :1100], 1024).shape == (2, 1100, 3)  # pool capped at N
    with pytest.raises(ValueError, match="no default FPS pool"):
        fps_pool(points, 1000)
    with pytest.raises(ValueError, match="cannot take 1024"):
        fps_pool(points[:, :1000], 1024)


# ---------------------------------------------------------------- scripts

def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)


def load_check_data():
    """datasets/check_data.py as a module (``datasets/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("check_data", REPO / "datasets" / "check_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_data_good_and_broken(data_root: Path, capsys, monkeypatch):
    check_data = load_check_data()  # the fixture's clouds are small: ask for what they hold
    monkeypatch.setitem(check_data.SETTINGS, "modelnet_npoints", 40)
    monkeypatch.setitem(check_data.SETTINGS, "modelnet_task_npoints", 32)
    monkeypatch.setitem(check_data.SETTINGS, "fewshot_task_npoints", 50)
    for name in ("shapenet", "modelnet", "fewshot", "scanobjectnn"):
        assert check_data.main(["--root", str(data_root), "--only", name]) == 0, capsys.readouterr().out
    os.remove(data_root / "ShapeNet55-34" / "shapenet_pc" / "02691156-b2.npy")
    write_h5(data_root / "ScanObjectNN" / SCAN_FILES[3], np.zeros((2, 8, 3)), np.zeros(2), ("points", "label"))
    os.remove(data_root / "ModelNetFewshot" / "10way_20shot" / "4.pkl")
    capsys.readouterr()
    assert check_data.main(["--root", str(data_root)]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 clouds listed in train.txt are rejected (first: ShapeNet point file not found: " in out
    assert "02691156-b2.npy" in out and "found keys ['label', 'points']" in out
    assert "1 of 10 fold files of 10way_20shot are rejected" in out and "10way_20shot/4.pkl" in out
    assert "1 class folders, expected 1000" in out and "no image files in the 1 class folders" in out


def test_make_fewshot_splits_round_trip(data_root: Path, tmp_path: Path):
    out = tmp_path / "fewshot"
    result = run_script("datasets/make_fewshot_splits.py", "--modelnet",
                        str(data_root / "ModelNet" / "modelnet40_normal_resampled"), "--out", str(out),
                        "--ways", "3", "--shots", "1", "--folds", "2", "--query", "1", "--npoints", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    train = ModelNetFewShot(out, way=3, shot=1, fold=1, subset="train", use_normals=True)
    test = ModelNetFewShot(out, way=3, shot=1, fold=1, subset="test")
    assert len(train) == 3 and len(test) == 3 and train[0][0].shape == (30, 6)
    assert sorted(int(test[i][1]) for i in range(3)) == [0, 1, 2]


def test_first_per_class_keeps_file_order():
    from pointcloud.data.scanobjectnn import first_per_class

    labels = np.array([2, 0, 2, 1, 2, 0, 0])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 3, 5]
    assert first_per_class(labels, 0).tolist() == []
    assert first_per_class(labels, 10).tolist() == list(range(7))
