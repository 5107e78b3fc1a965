"""Procedural part-annotated shapes: geometry, part labels, determinism, and the files the real
readers read."""
import importlib.util
import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from map_core.config import load_config
from pointcloud.data import ModelNet, ScanObjectNN, ShapeNet, ShapeNetPart

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo_shapes", ROOT / "datasets" / "demo_shapes.py")
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)

PER_CATEGORY = 4  # 3 training shapes and 1 test shape per category in the test builds
CATEGORIES = len(shapes.CATEGORY_NAMES)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shapes, "PART_LABELLED", 2)  # 2 labelled part shapes per category, 1 in 'val'
        return shapes.build_demo_shapes(tmp_path_factory.mktemp("a") / "shapes", shapes_per_category=PER_CATEGORY)


def _files(root: Path):
    return sorted(p for p in root.rglob("*") if p.is_file())


def _triangle_normals(mesh):
    vertices, triangles = mesh
    corners = vertices[triangles]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return corners.mean(1), cross, 0.5 * np.linalg.norm(cross, axis=1)


def test_categories_and_part_labels():
    table = shapes.category_parts()
    assert len(table) >= 10 and list(table) == list(shapes.CATEGORY_NAMES)
    labels = [p for parts in table.values() for p in parts]
    assert labels == list(range(len(labels))) and len(labels) >= 30  # disjoint, numbered in order
    assert all(len(parts) >= 2 for parts in table.values())
    for c, name in enumerate(shapes.CATEGORY_NAMES):  # every part of every category occurs
        seen = set()
        for i in range(12):
            seen |= set(shapes.make_shape(c, 0, i)["parts"].tolist())
        assert seen == set(table[name]), name


def test_gauge_scales_the_thicknesses_of_a_shape():
    """The same draws with gauge 0.5 and 2: the chair's seat is 4x as thick and its legs 4x as wide
    (the radius of a leg's top ring of vertices), the seat's outline the same."""
    thin, thick = (shapes.chair(np.random.default_rng(3), g) for g in (0.5, 2.0))
    assert [label for label, _ in thin] == [label for label, _ in thick]
    seat_thin, seat_thick = thin[0][1][0], thick[0][1][0]
    assert np.ptp(seat_thick[:, 1]) == pytest.approx(4 * np.ptp(seat_thin[:, 1]))
    np.testing.assert_allclose(np.ptp(seat_thick[:, [0, 2]], axis=0), np.ptp(seat_thin[:, [0, 2]], axis=0))
    def top_ring_radius(leg):
        ring = leg[1][0][:12]  # a rod's first ring: 12 profile vertices around the leg's top
        return np.linalg.norm(ring - ring.mean(0), axis=1).max()

    assert thin[1][0] == 2 and top_ring_radius(thick[1]) == pytest.approx(4 * top_ring_radius(thin[1]))


def test_partseg_config_lists_the_generator_parts():
    for name in ("shapes_partseg.yaml",):
        cfg = load_config(str(ROOT / "configs" / "demo" / name), [])
        assert cfg["dataset"]["train"]["category_parts"] == shapes.category_parts()
        assert cfg["model"]["num_parts"] == 36 and cfg["model"]["num_categories"] == CATEGORIES


def test_box_sampled_uniformly_by_area_with_outward_normals():
    """A 1 x 2 x 3 block with sharp edges: the share of points on each pair of faces is its share
    of the area (2, 3 and 6 of 11), every point lies on the surface, normals point out."""
    mesh = shapes.box((1.0, 2.0, 3.0), (0.0, 1.0, 0.0), exponent=200.0, k=64)
    points, normals, labels = shapes.sample_surface([(7, mesh)], 20000, np.random.default_rng(0))
    assert (labels == 7).all()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-9)
    p = points - (0.0, 1.0, 0.0)
    on_face = np.abs(np.abs(p) - (0.5, 1.0, 1.5)) < 0.02  # (N, 3): on the face normal to x, y, z
    assert on_face.any(axis=1).mean() > 0.99
    np.testing.assert_allclose(on_face.mean(0), np.array([6, 3, 2]) / 11, atol=0.02)
    assert ((normals * p).sum(1) > 0).all()


def test_revolve_sweep_and_torus_have_outward_normals_and_the_right_area():
    cylinder = shapes.revolve(shapes.solid([1.0, 1.0], [0.0, 2.0]), k=256)
    centres, cross, area = _triangle_normals(cylinder)
    assert area.sum() == pytest.approx(2 * np.pi + 4 * np.pi, rel=1e-3)
    assert ((cross * (centres - (0.0, 1.0, 0.0))).sum(1) >= 0).all()
    torus = shapes.tube(shapes.arc(1.0, 0, 2 * np.pi, 256, "xz", endpoint=False), 0.2, closed=True, k=64)
    centres, cross, area = _triangle_normals(torus)
    assert area.sum() == pytest.approx(4 * np.pi ** 2 * 0.2, rel=1e-2)
    ring = centres * (1.0, 0.0, 1.0)
    ring /= np.linalg.norm(ring, axis=1, keepdims=True)
    assert ((cross * (centres - ring)).sum(1) > 0).all()
    mug = shapes.revolve(shapes.vessel([1.0, 1.0], [0.0, 2.0], 0.1), k=128)
    centres, cross, area = _triangle_normals(mug)  # outer wall, rim, inner wall, both bottoms
    assert area.sum() == pytest.approx(np.pi * (1 + 2 * 2 + 1 - 0.81 + 2 * 0.9 * 1.9 + 0.81), rel=1e-2)


def test_visible_sees_the_front_face_of_a_cube():
    """A unit cube seen along z: every point of the front face, none of the back face, and of the
    side faces (seen edge-on) only about the band within the depth tolerance of the front."""
    cube = shapes.box((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), exponent=200.0, k=64)
    points, _, _ = shapes.sample_surface([(0, cube)], 30000, np.random.default_rng(0))
    seen = shapes.visible(points, np.array([0.0, 0.0, 1.0]), cell=0.05, tolerance=0.05)
    front, back = points[:, 2] > 0.499, points[:, 2] < -0.499
    assert seen[front].all() and not seen[back].any()
    side = ~front & ~back
    assert 0.5 * 0.05 < seen[side].mean() < 2 * 0.05


def test_shape_is_deterministic_and_independent_of_its_neighbours():
    a, b = shapes.make_shape(3, 0, 5), shapes.make_shape(3, 0, 5)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert not np.allclose(a["points"], shapes.make_shape(3, 0, 6)["points"])
    assert not np.allclose(a["points"], shapes.make_shape(3, 1, 5)["points"])


def test_clouds_normalised_with_unit_normals():
    shape = shapes.make_shape(0, 0, 0)
    for key in ("points", "objbg", "objonly", "hardest"):
        cloud = shape[key]
        assert cloud.shape == (shapes.NUM_POINTS, 3) and cloud.dtype == np.float32
        assert np.linalg.norm(cloud, axis=1).max() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(cloud.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(shape["normals"], axis=1), 1.0, atol=1e-5)


def test_scans_have_a_floor_of_clutter():
    """objbg's lowest points (a floor patch under the object) spread wider than those of the
    object-only scan of the same lamp (its round base)."""
    scan = shapes.make_shape(shapes.CATEGORY_NAMES.index("lamp"), 0, 0)
    widths = {}
    for key in ("objbg", "objonly"):
        cloud = scan[key]
        low = cloud[cloud[:, 1] < cloud[:, 1].min() + 0.03]
        widths[key] = np.ptp(low[:, [0, 2]], axis=0).max()
        assert len(low) > 20
    assert widths["objbg"] > 1.3 * widths["objonly"]


def test_files_read_by_the_real_readers(build):
    counts = {"train": 3 * CATEGORIES, "test": CATEGORIES}
    for split, n in counts.items():
        pretrain = ShapeNet(build["shapenet_list"], build["shapenet_pc"], subset=split, npoints=1024)
        assert len(pretrain) == n and len(pretrain.classes) == CATEGORIES
        assert pretrain[0][0].shape == (1024, 3)
        modelnet = ModelNet(build["modelnet"], npoints=1024, subset=split, use_normals=True)
        assert modelnet.dat is not None and modelnet.classes == list(shapes.CATEGORY_NAMES) and len(modelnet) == n
        points, label = modelnet[n - 1]
        assert points.shape == (1024, 6) and int(label) == CATEGORIES - 1
        for variant in ("objbg", "objonly", "hardest"):
            scans = ScanObjectNN(build["scanobjectnn"], variant, split, num_classes=CATEGORIES)
            assert len(scans) == n and scans[0][0].shape == (1024, 3)
            assert np.array_equal(scans.labels, np.repeat(np.arange(CATEGORIES), n // CATEGORIES))
    parts = load_config(str(ROOT / "configs" / "demo" / "shapes_partseg.yaml"), [])["dataset"]["train"]["category_parts"]
    sizes = {"train": 2, "val": 1, "trainval": 3, "test": 1}
    for split, n in sizes.items():
        dataset = ShapeNetPart(build["shapenetpart"], split=split, npoints=256, category_parts=parts)
        assert len(dataset) == n * CATEGORIES and dataset.categories == list(shapes.CATEGORY_NAMES)
        points, category, labels = dataset[-1]
        assert points.shape == (256, 3) and int(category) == CATEGORIES - 1
        assert set(labels.tolist()) <= set(parts["umbrella"])


def test_formats_hold_the_same_points(build):
    name = (build["shapenet_list"] / "train.txt").read_text().splitlines()[4]  # bottle, shape 1
    taxonomy, model = name[:-len(".npy")].split("-")
    assert (taxonomy, model) == (shapes.taxonomy_id(1), "bottle0001")
    cloud = np.load(build["shapenet_pc"] / name)
    shape = shapes.make_shape(1, 0, 1)
    assert np.array_equal(cloud, shape["points"])
    rows = np.loadtxt(build["shapenetpart"] / taxonomy / f"{model}.txt")
    np.testing.assert_allclose(rows[:, :3], cloud, atol=1e-5)
    np.testing.assert_allclose(rows[:, 3:6], shape["normals"], atol=1e-4)
    assert np.array_equal(rows[:, 6].astype(int), shape["parts"])
    with open(build["modelnet"] / "modelnet40_train_1024pts_fps.dat", "rb") as f:
        clouds, labels = pickle.load(f)
    assert np.array_equal(clouds[4][:, :3], cloud) and int(labels[4][0]) == 1
    with h5py.File(build["scanobjectnn"] / "main_split" / "training_objectdataset.h5", "r") as f:
        assert np.array_equal(f["data"][4], shape["objbg"])


def test_manifest(build):
    manifest = json.loads(build["manifest"].read_text())
    assert manifest["version"] == shapes.VERSION and manifest["shapes_per_category"] == PER_CATEGORY
    assert manifest["split_sizes"] == {"train": 3 * CATEGORIES, "test": CATEGORIES}
    assert manifest["categories"]["mug"] == {"body": 22, "handle": 23}


def test_build_deterministic_idempotent_and_atomic(build, tmp_path):
    out = tmp_path / "shapes"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shapes, "PART_LABELLED", 2)
        shapes.build_demo_shapes(out, shapes_per_category=PER_CATEGORY)
    a, b = _files(build["root"]), _files(out)
    assert [p.relative_to(build["root"]) for p in a] == [p.relative_to(out) for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    before = {p: p.stat().st_mtime_ns for p in b}
    shapes.build_demo_shapes(out, shapes_per_category=PER_CATEGORY)
    assert {p: p.stat().st_mtime_ns for p in _files(out)} == before
    assert os.listdir(tmp_path) == ["shapes"]


def test_refuses_foreign_folder_and_tiny_builds(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo-shapes build"):
        shapes.build_demo_shapes(tmp_path, shapes_per_category=2)
    assert (tmp_path / "mine.txt").exists()
    with pytest.raises(ValueError, match="at least 2"):
        shapes.build_demo_shapes(tmp_path / "x", shapes_per_category=1)
