"""Bundled 3D miniature where geometry matters: procedural, part-annotated man-made shapes.

Twelve categories of objects, each assembled from parts with their own geometry (plates, rods,
tubes, shells of revolution, bent handles, wings), with random proportions, part counts, styles
and small deformations. Categories overlap in coarse shape (chair / stool / table, lamp / umbrella,
mug / bucket, bottle / rocket) and differ in local detail. Within a shape some choices are shared
by its parts: above all its gauge (0.5x to 2x, scaling every plate, wall, rod and tube thickness),
and styles such as round or square cross-sections and rounded or sharp corners. So what a visible
patch looks like says something about the hidden ones that the patch centres alone do not (on the
3D digits a masked group is predictable from the group centres, docs/ablation.md). 36 parts in all.

Every part is a triangle mesh (``sweep``: a 2D profile along a 3D path; ``revolve``: a 2D section
about the vertical axis); points are sampled on the surfaces in proportion to area, each with its
face's outward normal and its part label. Each shape has its own generator seeded by
(seed, category, index), so a shape does not depend on which others are built. y is up, objects
stand on y = 0 before normalisation; clouds are centred at the mean and scaled into the unit sphere.

Written in the real on-disk layouts, so the real readers run on them unchanged::

    <out>/manifest.json                             version, seed, shapes per category, splits
    <out>/ShapeNet55-34/ShapeNet-55/{train,test}.txt          '<taxonomy>-<category><index>.npy' lines
    <out>/ShapeNet55-34/shapenet_pc/<taxonomy>-<category><index>.npy   (NUM_POINTS, 3) float32
    <out>/ModelNet/modelnet40_normal_resampled/
        modelnet40_shape_names.txt                  the 12 category names
        modelnet40_{train,test}.txt                 '<category>_<index>' ids
        modelnet40_{train,test}_<NUM_POINTS>pts_fps.dat   pickled [list of (NUM_POINTS, 6) xyz + normal, list of (1,) labels]
    <out>/ScanObjectNN/main_split/{training,test}_objectdataset.h5                      objbg
    <out>/ScanObjectNN/main_split_nobg/{training,test}_objectdataset.h5                 objonly
    <out>/ScanObjectNN/main_split/{training,test}_objectdataset_augmentedrot_scale75.h5 hardest
                                                    data (M, NUM_POINTS, 3) float32, label (M,) int64
    <out>/shapenetcore_partanno_segmentation_benchmark_v0_normal/
        synsetoffset2category.txt                   '<Category>\t<taxonomy>'
        train_test_split/shuffled_{train,val,test}_file_list.json   'shape_data/<taxonomy>/<category><index>'
        <taxonomy>/<category><index>.txt            NUM_POINTS rows 'x y z nx ny nz part'

The ShapeNet-55 clouds, the ModelNet clouds and the ShapeNetPart rows are the same points. The
ModelNet folder holds the preprocessed ``.dat`` files only (no per-shape txt files; the reader uses
the ``.dat`` when it is there). ScanObjectNN-style clouds are scans of the same shapes: the
surface seen from one random viewpoint (a depth buffer removes hidden points), objbg with a floor
patch and one or two boxes of background clutter that also occlude, objonly without them, hardest
with clutter, a full turn about the vertical axis and a random scale (the real "PB-T50-RS" files
add such perturbations to objbg scans). ShapeNetPart split: ``train`` holds the first
PART_LABELLED training shapes of each category (a low-label split), ``val`` the other training
shapes, ``test`` the test shapes; ``trainval`` (Point-MAE's training set) is all training shapes.

The build is atomic and idempotent, as ``datasets/demo_digits.py``'s.
CLI: ``python datasets/demo_shapes.py --out .cache/demo_shapes``.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import pickle
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

logger = logging.getLogger(__name__)

VERSION = 1
NUM_POINTS = 1024
SHAPES_PER_CATEGORY = 200  # 150 train + 50 test
TEST_FRACTION = 0.25
PART_LABELLED = 20  # training shapes per category in the ShapeNetPart 'train' split
PARTSEG_ROW_FORMAT = "%.5f %.5f %.5f %.4f %.4f %.4f %d\n"  # x y z nx ny nz part
MANIFEST = "manifest.json"

PathLike = Union[str, Path]
Mesh = Tuple[np.ndarray, np.ndarray]  # vertices (V, 3) float64, triangles (T, 3) int64 (outward normals)
Part = Tuple[int, Mesh]  # (part index within the category, mesh)


def _sibling(name: str):
    """A module of ``datasets/`` by path (the folder is not a package: it would shadow HF ``datasets``)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_digits = _sibling("demo_digits")  # the atomic build and the normalisation are the digits'
normalize_points = _digits.normalize_points


# ----------------------------------------------------------------------------- meshes
def superellipse(k: int, a: float, b: float, exponent: float = 2.0) -> np.ndarray:
    """(k, 2) counter-clockwise points of |x/a|^e + |y/b|^e = 1: e = 2 an ellipse, large e a
    rectangle with rounded corners (the larger e, the sharper)."""
    t = np.linspace(0.0, 2 * np.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([a * np.sign(c) * np.abs(c) ** (2 / exponent), b * np.sign(s) * np.abs(s) ** (2 / exponent)], 1)


def _tangents(path: np.ndarray, closed: bool) -> np.ndarray:
    if closed:
        t = np.roll(path, -1, axis=0) - np.roll(path, 1, axis=0)
    else:
        t = np.gradient(path, axis=0)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def _frames(path: np.ndarray, tangents: np.ndarray, up: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rotation-minimising frames along ``path`` (double reflection, Wang et al. 2008): normals and
    binormals (P, 3), the first normal the part of ``up`` orthogonal to the first tangent."""
    r = up - up @ tangents[0] * tangents[0]
    if np.linalg.norm(r) < 1e-8:
        r = np.cross(tangents[0], [1.0, 0.0, 0.0] if abs(tangents[0][0]) < 0.9 else [0.0, 0.0, 1.0])
    normals = [r / np.linalg.norm(r)]
    for i in range(len(path) - 1):
        v1 = path[i + 1] - path[i]
        c1 = v1 @ v1
        r_l = normals[i] - 2 / c1 * (v1 @ normals[i]) * v1
        t_l = tangents[i] - 2 / c1 * (v1 @ tangents[i]) * v1
        v2 = tangents[i + 1] - t_l
        c2 = v2 @ v2
        r_next = r_l - 2 / c2 * (v2 @ r_l) * v2 if c2 > 1e-16 else r_l
        normals.append(r_next / np.linalg.norm(r_next))
    normals = np.array(normals)
    return normals, np.cross(tangents, normals)


def _ring_triangles(rings: int, k: int, closed: bool) -> np.ndarray:
    """Triangles joining ``rings`` consecutive rings of ``k`` vertices (ring-major numbering); the
    last ring joins the first when ``closed``. Quad (a, b, c, d) -> (a, b, d), (b, c, d)."""
    i, j = np.meshgrid(np.arange(rings if closed else rings - 1), np.arange(k), indexing="ij")
    a = i * k + j
    b = i * k + (j + 1) % k
    c = ((i + 1) % rings) * k + (j + 1) % k
    d = ((i + 1) % rings) * k + j
    return np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])


def sweep(path: np.ndarray, profile: np.ndarray, scale: Optional[np.ndarray] = None, closed: bool = False,
          caps: bool = True, up: Sequence[float] = (0.0, 1.0, 0.0)) -> Mesh:
    """A tube: the counter-clockwise ``profile`` (K, 2) carried along ``path`` (P, 3) in the path's
    rotation-minimising frame (profile x along the frame normal, which starts as ``up`` made
    orthogonal to the path). ``scale``: (P,) or (P, 2) per-ring scale of the profile (tapers);
    ``closed``: the path is a loop (a torus); ``caps``: close the ends of an open path with fans.
    Boxes, plates, rods, cones, handles and wings are all sweeps."""
    path = np.asarray(path, dtype=np.float64)
    tangents = _tangents(path, closed)
    normals, binormals = _frames(path, tangents, np.asarray(up, dtype=np.float64))
    scale = np.ones((len(path), 2)) if scale is None else np.broadcast_to(
        np.asarray(scale, dtype=np.float64).reshape(len(path), -1), (len(path), 2))
    xy = profile[None] * scale[:, None]  # (P, K, 2)
    vertices = path[:, None] + xy[..., :1] * normals[:, None] + xy[..., 1:] * binormals[:, None]
    k = len(profile)
    vertices = vertices.reshape(-1, 3)
    triangles = [_ring_triangles(len(path), k, closed)]
    if caps and not closed:
        centres = len(vertices) + np.arange(2)
        vertices = np.concatenate([vertices, path[[0, -1]]])
        j = np.arange(k)
        last = (len(path) - 1) * k
        triangles += [np.stack([np.full(k, centres[0]), (j + 1) % k, j], 1),
                      np.stack([np.full(k, centres[1]), last + j, last + (j + 1) % k], 1)]
    return vertices, np.concatenate(triangles)


def revolve(section: np.ndarray, k: int = 32, modulation: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Mesh:
    """A surface of revolution about the y axis: ``section`` (M, 2) is a polyline of (radius, y)
    traversed with the solid on its left (counter-clockwise around a closed region, e.g. (0, 0),
    (r, 0), (r, h), (0, h) for a solid cylinder). ``modulation(angle (k,)) -> (k,)`` multiplies
    the radius per angle (ribs, scallops)."""
    angle = np.linspace(0.0, 2 * np.pi, k, endpoint=False)
    factor = np.ones(k) if modulation is None else modulation(angle)
    r, y = section[:, :1] * factor[None], np.broadcast_to(section[:, 1:], (len(section), k))
    vertices = np.stack([r * np.cos(angle), y, r * np.sin(angle)], -1).reshape(-1, 3)
    triangles = _ring_triangles(len(section), k, closed=False)
    return vertices, triangles[:, [0, 2, 1]]


def transform(mesh: Mesh, rotation: Optional[np.ndarray] = None, offset: Sequence[float] = (0.0, 0.0, 0.0)) -> Mesh:
    """The mesh rotated by ``rotation`` (3, 3) (applied to column vectors) and moved by ``offset``."""
    vertices = mesh[0] if rotation is None else mesh[0] @ np.asarray(rotation).T
    return vertices + np.asarray(offset, dtype=np.float64), mesh[1]


def rotation(axis: str, angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about the x, y or z axis (right-handed)."""
    c, s = np.cos(angle), np.sin(angle)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def segment(start: Sequence[float], end: Sequence[float], n: int = 2, bow: Sequence[float] = (0.0, 0.0, 0.0)
            ) -> np.ndarray:
    """(n, 3) path from ``start`` to ``end``, bent sideways by ``bow`` (a parabola, ``bow`` at the middle)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) * np.asarray(start, float) + t * np.asarray(end, float) + 4 * t * (1 - t) * np.asarray(bow, float)


def arc(radius: float, start: float, stop: float, n: int = 16, plane: str = "xy", endpoint: bool = True
        ) -> np.ndarray:
    """(n, 3) points of a circular arc of ``radius`` about the origin from angle ``start`` to ``stop``
    in ``plane`` ('xy', 'xz' or 'zy'; the angle runs from the first axis to the second); a closed
    loop is ``arc(r, 0, 2 pi, n, plane, endpoint=False)``."""
    t = np.linspace(start, stop, n, endpoint=endpoint)
    out = np.zeros((n, 3))
    first, second = ("xyz".index(plane[0]), "xyz".index(plane[1]))
    out[:, first], out[:, second] = radius * np.cos(t), radius * np.sin(t)
    return out


def box(size: Sequence[float], centre: Sequence[float], exponent: float = 12.0, k: int = 24) -> Mesh:
    """A plate or block of ``size`` (x, y, z) centred at ``centre``, its vertical edges rounded by the
    superellipse ``exponent`` (2: an elliptic disc; 12: nearly sharp)."""
    sx, sy, sz = size
    cx, cy, cz = centre
    return sweep(segment((cx, cy - sy / 2, cz), (cx, cy + sy / 2, cz)), superellipse(k, sx / 2, sz / 2, exponent),
                 up=(1.0, 0.0, 0.0))


def rod(start: Sequence[float], end: Sequence[float], radius: float, exponent: float = 2.0, k: int = 12,
        bow: Sequence[float] = (0.0, 0.0, 0.0), taper: float = 1.0) -> Mesh:
    """A leg, pole or bar from ``start`` to ``end``: round (exponent 2) or square-ish (large exponent)
    cross-section of ``radius``, optionally bent by ``bow`` and tapered to ``taper`` x radius at the end."""
    n = 9 if any(bow) else 2
    return sweep(segment(start, end, n, bow), superellipse(k, radius, radius, exponent), np.linspace(1.0, taper, n))


def tube(path: np.ndarray, radius: float, closed: bool = False, k: int = 10) -> Mesh:
    """A round tube of ``radius`` along a curved ``path`` (handles, rings, hooks)."""
    return sweep(path, superellipse(k, radius, radius), closed=closed)


def shell(radii: Sequence[float], heights: Sequence[float], thickness: float) -> np.ndarray:
    """Section (for ``revolve``) of a wall of ``thickness`` whose outer radius runs through
    (radii[i], heights[i]) upwards, open at both ends (lamp shades, nacelles)."""
    outer = np.stack([radii, heights], 1).astype(np.float64)
    inner = outer[::-1] - [thickness, 0.0]
    return np.concatenate([outer, inner, outer[:1]])


def vessel(radii: Sequence[float], heights: Sequence[float], wall: float) -> np.ndarray:
    """Section of an open-topped vessel (mug, bucket): a base of thickness ``wall`` and a wall of
    ``wall`` whose outer radius runs through (radii[i], heights[i]) from the bottom (heights[0] = 0)."""
    outer = np.stack([radii, heights], 1).astype(np.float64)
    inner = outer[::-1] - [wall, 0.0]
    inner[-1, 1] = max(inner[-1, 1], wall)
    return np.concatenate([[[0.0, 0.0]], outer, inner, [[0.0, wall]]])


def solid(radii: Sequence[float], heights: Sequence[float]) -> np.ndarray:
    """Section of a closed solid of revolution whose radius runs through (radii[i], heights[i]) upwards."""
    outer = np.stack([radii, heights], 1).astype(np.float64)
    return np.concatenate([[[0.0, heights[0]]], outer, [[0.0, heights[-1]]]])


def wing(root: Sequence[float], tip: Sequence[float], chord: float, taper: float, thickness: float,
         up: Sequence[float] = (0.0, 1.0, 0.0), k: int = 16) -> Mesh:
    """A thin lifting surface (wing, tail plane, fin) from ``root`` to ``tip``: an elliptic profile
    ``chord`` long and ``thickness`` thick, the chord along ``up`` x path, tapered to ``taper`` x chord."""
    return sweep(segment(root, tip, 2), superellipse(k, thickness / 2, chord / 2), np.linspace(1.0, taper, 2), up=up)


# ----------------------------------------------------------------------------- categories
# Each builder draws one shape's proportions and styles from ``rng`` and returns its parts as
# (part index in the category, mesh); y is up and the object stands on y = 0. ``g``, the shape's
# gauge (0.5 to 2, the same for all its parts), scales every thickness: plates, walls, rods, tubes.
GAUGE = (0.5, 2.0)
def chair(rng: np.random.Generator, g: float) -> List[Part]:
    """seat, back (solid panel or slats), legs (round or square, straight or splayed), arms (half of them)."""
    w, d, h, t = rng.uniform(0.4, 0.6), rng.uniform(0.38, 0.55), rng.uniform(0.38, 0.5), g * rng.uniform(0.035, 0.05)
    corner, leg_shape = rng.choice([2.5, 4.0, 12.0]), rng.choice([2.0, 10.0])
    r, splay, inset = g * rng.uniform(0.016, 0.022), rng.uniform(0.0, 0.06), rng.uniform(0.0, 0.05)
    parts: List[Part] = [(0, box((w, t, d), (0.0, h - t / 2, 0.0), corner))]
    for sx in (-1, 1):
        for sz in (-1, 1):
            top = (sx * (w / 2 - r - inset), h - t, sz * (d / 2 - r - inset))
            parts.append((2, rod(top, (top[0] + sx * splay, 0.0, top[2] + sz * splay), r, leg_shape,
                                 taper=rng.uniform(0.6, 1.0))))
    height, tilt, tb = rng.uniform(0.35, 0.6), rng.uniform(0.0, 0.3), g * rng.uniform(0.025, 0.035)
    place = (rotation("x", -tilt), (0.0, h, -d / 2 + tb / 2))
    if rng.random() < 0.5:
        parts.append((1, transform(box((w, height, tb), (0.0, height / 2, 0.0), corner), *place)))
    else:
        slats = rng.integers(3, 7)
        rail = rng.uniform(0.04, 0.1)
        parts.append((1, transform(box((w, rail, tb), (0.0, height - rail / 2, 0.0), corner), *place)))
        for x in np.linspace(-w / 2 + r, w / 2 - r, slats):
            parts.append((1, transform(rod((x, 0.0, 0.0), (x, height - rail, 0.0), r * 0.7, leg_shape), *place)))
    if rng.random() < 0.5:
        arm_h = rng.uniform(0.18, 0.28)
        for sx in (-1, 1):
            x = sx * (w / 2 - r)
            parts.append((3, rod((x, h + arm_h, -d / 2), (x, h + arm_h, d / 2 - r), r * 1.2, leg_shape)))
            parts.append((3, rod((x, h, d / 2 - 2 * r), (x, h + arm_h, d / 2 - 2 * r), r, leg_shape)))
    return parts


def table(rng: np.random.Generator, g: float) -> List[Part]:
    """top (rectangular or round), legs (four, or a pedestal), stretchers (with four legs, most tables)."""
    w, h, t = rng.uniform(0.8, 1.4), rng.uniform(0.6, 0.8), g * rng.uniform(0.035, 0.05)
    round_top = rng.random() < 0.3
    d = w if round_top else rng.uniform(0.5, 0.9) * w
    parts: List[Part] = [(0, box((w, t, d), (0.0, h - t / 2, 0.0), 2.0 if round_top else rng.choice([4.0, 12.0])))]
    r, leg_shape = g * rng.uniform(0.022, 0.03), rng.choice([2.0, 10.0])
    if rng.random() < 0.25:  # pedestal: a column and a foot
        parts.append((1, rod((0.0, 0.0, 0.0), (0.0, h - t, 0.0), 2.5 * r, leg_shape)))
        parts.append((1, box((0.5 * w, 0.04, 0.5 * d), (0.0, 0.02, 0.0), 2.0 if round_top else 4.0)))
        return parts
    inset = rng.uniform(0.02, 0.12) * w
    corners = [(sx * (w / 2 - inset), sz * (d / 2 - inset)) for sx, sz in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    if round_top:
        corners = [(x * 0.7, z * 0.7) for x, z in corners]
    for x, z in corners:
        parts.append((1, rod((x, h - t, z), (x, 0.0, z), r, leg_shape)))
    if rng.random() < 0.65:
        y = rng.uniform(0.1, 0.3)
        pairs = [(0, 1), (1, 2), (2, 3), (3, 0)] if rng.random() < 0.5 else [(0, 3), (1, 2)]
        for i, j in pairs:
            (x0, z0), (x1, z1) = corners[i], corners[j]
            parts.append((2, rod((x0, y, z0), (x1, y, z1), 0.6 * r, leg_shape)))
    return parts


def stool(rng: np.random.Generator, g: float) -> List[Part]:
    """seat (round or square), three or four splayed legs, a footrest ring or bars."""
    radius, h, t = rng.uniform(0.15, 0.22), rng.uniform(0.45, 0.75), g * rng.uniform(0.03, 0.045)
    parts: List[Part] = [(0, box((2 * radius, t, 2 * radius), (0.0, h - t / 2, 0.0), rng.choice([2.0, 2.0, 8.0])))]
    legs, r, leg_shape = rng.integers(3, 5), g * rng.uniform(0.013, 0.018), rng.choice([2.0, 10.0])
    top_r, foot_r = radius * rng.uniform(0.6, 0.85), radius * rng.uniform(1.0, 1.5)
    angles = np.arange(legs) * 2 * np.pi / legs + rng.uniform(0, np.pi)
    for a in angles:
        parts.append((1, rod((top_r * np.cos(a), h - t, top_r * np.sin(a)),
                             (foot_r * np.cos(a), 0.0, foot_r * np.sin(a)), r, leg_shape)))
    y = h * rng.uniform(0.25, 0.45)
    ring_r = foot_r + (top_r - foot_r) * y / (h - t)
    if rng.random() < 0.6:
        parts.append((2, transform(tube(arc(ring_r, 0, 2 * np.pi, 24, "xz", endpoint=False), 0.8 * r, closed=True),
                                   offset=(0.0, y, 0.0))))
    else:
        for a, b in zip(angles, np.roll(angles, -1)):
            parts.append((2, rod((ring_r * np.cos(a), y, ring_r * np.sin(a)),
                                 (ring_r * np.cos(b), y, ring_r * np.sin(b)), 0.7 * r, leg_shape)))
    return parts


def lamp(rng: np.random.Generator, g: float) -> List[Part]:
    """base (disc, dome or square), pole (straight, bent or angled), shade (cone, drum or dome shell)."""
    base_r, base_h = rng.uniform(0.1, 0.18), g * rng.uniform(0.025, 0.04)
    style = rng.integers(3)
    if style == 0:
        base = revolve(solid([base_r, base_r], [0.0, base_h]))
    elif style == 1:
        y = np.linspace(0, 1, 6)
        base = revolve(solid(base_r * np.sqrt(1 - 0.8 * y ** 2), base_h * 1.5 * y))
    else:
        base = box((2 * base_r, base_h, 2 * base_r), (0.0, base_h / 2, 0.0), 8.0)
    parts: List[Part] = [(0, base)]
    height, r = rng.uniform(0.4, 0.75), g * rng.uniform(0.009, 0.013)
    top = np.array([rng.uniform(-0.15, 0.15) * (style != 0), height, 0.0])
    bow = (rng.uniform(-0.12, 0.12), 0.0, rng.uniform(-0.05, 0.05)) if rng.random() < 0.5 else (0.0, 0.0, 0.0)
    parts.append((1, rod((0.0, base_h, 0.0), top, r, bow=bow)))
    sr, sh, wall = rng.uniform(0.1, 0.2), rng.uniform(0.1, 0.22), g * rng.uniform(0.005, 0.008)
    shade = rng.integers(3)
    if shade == 0:  # cone, wide at the bottom
        section = shell([sr, sr * rng.uniform(0.4, 0.7)], [0.0, sh], wall)
    elif shade == 1:  # drum
        section = shell([sr, sr], [0.0, sh], wall)
    else:  # dome, open below
        a = np.linspace(0.0, np.pi / 2 * 0.95, 8)
        section = shell(sr * np.cos(a), sh * np.sin(a), wall)
    parts.append((2, transform(revolve(section, 32), offset=top - (0.0, 0.4 * sh, 0.0))))
    return parts


def umbrella(rng: np.random.Generator, g: float) -> List[Part]:
    """canopy (a thin dome with scalloped ribs), shaft, handle (a hook or a straight grip)."""
    radius, height, sag = rng.uniform(0.35, 0.55), rng.uniform(0.6, 0.9), rng.uniform(0.1, 0.25)
    ribs, depth, t = rng.integers(6, 11), rng.uniform(0.03, 0.08), g * rng.uniform(0.007, 0.011)
    s = np.linspace(0.0, 1.0, 10)
    outer = np.stack([radius * s, height - sag * s ** 1.5], 1)
    section = np.concatenate([[[0.0, height + t]], outer[1:] + [0.0, t], outer[::-1]])
    parts: List[Part] = [(0, revolve(section, 48, lambda a: 1 - depth + depth * np.abs(np.cos(ribs * a / 2))))]
    r = g * rng.uniform(0.008, 0.012)
    low = rng.uniform(0.12, 0.2)
    parts.append((1, rod((0.0, low, 0.0), (0.0, height, 0.0), r)))
    if rng.random() < 0.5:
        hook = rng.uniform(0.05, 0.09)
        path = arc(hook, np.pi, 2 * np.pi + 0.3, 14, "xy") + (hook, low, 0.0)
        parts.append((2, tube(np.concatenate([[(0.0, low + 0.02, 0.0)], path]), r * 1.6)))
    else:
        parts.append((2, rod((0.0, 0.0, 0.0), (0.0, low, 0.0), r * rng.uniform(2.0, 3.0), rng.choice([2.0, 6.0]))))
    return parts


def mug(rng: np.random.Generator, g: float) -> List[Part]:
    """body (a thick-walled vessel, straight or barrel), handle (a C or a D loop on the side)."""
    radius, height, wall = rng.uniform(0.12, 0.2), rng.uniform(0.2, 0.35), g * rng.uniform(0.012, 0.02)
    y = np.linspace(0.0, height, 6)
    bulge = rng.choice([0.0, rng.uniform(0.05, 0.15)])
    radii = radius * (1 + bulge * np.sin(np.pi * y / height)) * np.linspace(1.0, rng.uniform(0.9, 1.1), 6)
    parts: List[Part] = [(0, revolve(vessel(radii, y, wall), 40))]
    span, reach, r = rng.uniform(0.5, 0.8) * height, rng.uniform(0.06, 0.12), g * rng.uniform(0.012, 0.018)
    mid = height * rng.uniform(0.45, 0.55)
    x0 = radii.min() * 0.95
    if rng.random() < 0.5:
        path = arc(1.0, -np.pi / 2, np.pi / 2, 16, "xy") * (reach, span / 2, 0.0) + (x0, mid, 0.0)
    else:
        path = np.array([(x0, mid + span / 2, 0.0), (x0 + reach, mid + span / 2, 0.0),
                         (x0 + reach, mid - span / 2, 0.0), (x0, mid - span / 2, 0.0)])
        path = np.concatenate([segment(a, b, 6)[:-1] for a, b in zip(path, path[1:])] + [path[-1:]])[::-1]
    parts.append((1, sweep(path, superellipse(10, r, r * rng.uniform(1.0, 1.8)), up=(0.0, 0.0, 1.0))))
    return parts


def bucket(rng: np.random.Generator, g: float) -> List[Part]:
    """body (a thin vessel, wider at the top, with or without a rolled rim), handle (a wire arc)."""
    radius, height, wall = rng.uniform(0.15, 0.22), rng.uniform(0.25, 0.4), g * rng.uniform(0.005, 0.008)
    top = radius * rng.uniform(1.1, 1.4)
    parts: List[Part] = [(0, revolve(vessel([radius, top], [0.0, height], wall), 40))]
    if rng.random() < 0.5:
        parts.append((0, transform(tube(arc(top, 0, 2 * np.pi, 32, "xz", endpoint=False), 2 * wall, closed=True),
                                   offset=(0.0, height, 0.0))))
    lift = rng.uniform(-1.2, 1.2)  # the handle stands up (0) or lies to one side
    loop = arc(top, 0.0, np.pi, 20, "xy")
    path = transform((loop, np.zeros((0, 3), int)), rotation("x", lift), (0.0, height * 0.9, 0.0))[0]
    parts.append((1, tube(path, g * rng.uniform(0.004, 0.006), k=8)))
    return parts


def bottle(rng: np.random.Generator, g: float) -> List[Part]:
    """body (round, square or fluted, with a shoulder), neck, cap (smooth or ribbed)."""
    radius, body_h, shoulder = rng.uniform(0.1, 0.16), rng.uniform(0.3, 0.55), rng.uniform(0.05, 0.15)
    neck_r, neck_h = radius * rng.uniform(0.25, 0.45), rng.uniform(0.05, 0.15)
    style, flutes = rng.integers(3), rng.integers(8, 16)
    shape = {0: None, 1: lambda a: 1 / np.maximum(np.abs(np.cos(a)), np.abs(np.sin(a))) ** 0.8,
             2: lambda a: 1 + 0.05 * np.cos(flutes * a)}
    s = np.linspace(0.0, 1.0, 6)
    radii = np.concatenate([[radius, radius], neck_r + (radius - neck_r) * np.cos(s[1:] * np.pi / 2)])
    heights = np.concatenate([[0.0, body_h], body_h + shoulder * s[1:]])
    parts: List[Part] = [(0, revolve(solid(radii, heights), 40, shape[style]))]
    y0 = body_h + shoulder
    parts.append((1, revolve(solid([neck_r, neck_r], [y0, y0 + neck_h]), 24)))
    cap_r, cap_h = neck_r * rng.uniform(1.1, 1.35), g * rng.uniform(0.035, 0.05)
    ribbed = (lambda a: 1 + 0.06 * np.cos(24 * a)) if rng.random() < 0.5 else None
    parts.append((2, revolve(solid([cap_r, cap_r], [y0 + neck_h, y0 + neck_h + cap_h]), 48, ribbed)))
    return parts


def rocket(rng: np.random.Generator, g: float) -> List[Part]:
    """body (one or two stages), nose (cone or ogive), three or four fins."""
    radius, length = rng.uniform(0.06, 0.12), rng.uniform(0.6, 1.0)
    if rng.random() < 0.5:
        body = solid([radius, radius], [0.0, length])
    else:
        upper = radius * rng.uniform(0.6, 0.85)
        split = length * rng.uniform(0.4, 0.6)
        body = solid([radius, radius, upper, upper], [0.0, split, split + 0.03, length])
    parts: List[Part] = [(0, revolve(body, 32))]
    top = body[-2, 0]
    nose_h = rng.uniform(0.15, 0.35)
    s = np.linspace(0.0, 1.0, 8)
    profile = 1 - s if rng.random() < 0.5 else np.sqrt(1 - s ** 2)
    parts.append((1, revolve(solid(top * profile, length + nose_h * s), 32)))
    fins, span, chord = rng.integers(3, 5), rng.uniform(0.08, 0.2), rng.uniform(0.12, 0.25)
    sweep_back, t = rng.uniform(0.0, 0.1), g * rng.uniform(0.012, 0.018)
    for a in np.arange(fins) * 2 * np.pi / fins:
        fin = wing((radius * 0.9, chord / 2, 0.0), (radius + span, chord / 2 - sweep_back, 0.0), chord,
                   rng.uniform(0.3, 0.7), t, up=(0.0, 0.0, 1.0))
        parts.append((2, transform(fin, rotation("y", a))))
    return parts


def airplane(rng: np.random.Generator, g: float) -> List[Part]:
    """fuselage, wings (swept, tapered, dihedral), tail (stabilisers and fin), 0, 2 or 4 engines."""
    length, radius = rng.uniform(0.9, 1.3), rng.uniform(0.05, 0.09)
    y = np.linspace(0.0, 1.0, 12)
    radii = radius * np.clip(np.minimum(4 * y, 1.0) ** 0.6 * np.minimum(1.0, (1.05 - y) * 3.5), 0.2, None)
    radii[0] = radii[-1] = 0.0
    fuselage = transform(revolve(np.stack([radii, length * (y - 0.5)], 1), 24), rotation("x", np.pi / 2),
                         (0.0, radius, 0.0))
    parts: List[Part] = [(0, fuselage)]
    span, chord, sweep_back = rng.uniform(0.4, 0.7), rng.uniform(0.12, 0.25), rng.uniform(0.0, 0.3)
    dihedral, wing_z, wing_y = rng.uniform(0.0, 0.08), rng.uniform(-0.1, 0.1) * length, radius * rng.uniform(0.5, 1.5)
    t, taper = g * rng.uniform(0.015, 0.02), rng.uniform(0.3, 0.8)
    tail_span, tail_chord = span * rng.uniform(0.3, 0.45), chord * rng.uniform(0.5, 0.8)
    for sx in (-1, 1):
        parts.append((1, wing((0.0, wing_y, wing_z), (sx * span, wing_y + dihedral, wing_z - sweep_back * span),
                              chord, taper, t)))
        parts.append((2, wing((0.0, radius * 1.3, -length / 2 + tail_chord / 2),
                              (sx * tail_span, radius * 1.3, -length / 2 + tail_chord / 2 - 0.1 * tail_span),
                              tail_chord, 0.6, t * 0.7)))
    fin_h = rng.uniform(0.12, 0.25)
    parts.append((2, wing((0.0, radius * 1.5, -length / 2 + tail_chord / 2),
                          (0.0, radius * 1.5 + fin_h, -length / 2 + tail_chord / 2 - 0.5 * fin_h),
                          tail_chord * 1.2, 0.5, t * 0.7, up=(1.0, 0.0, 0.0))))
    engines = rng.choice([0, 2, 4])
    e_r, e_len = rng.uniform(0.03, 0.05), rng.uniform(0.12, 0.2)
    for i in range(engines):
        along = span * (0.35 if i < 2 else 0.65)
        sx = -1 if i % 2 == 0 else 1
        nacelle = revolve(shell([e_r, e_r * 0.85], [0.0, e_len], e_r * 0.3), 20)
        centre = (sx * along, wing_y + dihedral * along / span - e_r * 1.2, wing_z - sweep_back * along + e_len / 2)
        parts.append((3, transform(nacelle, rotation("x", -np.pi / 2), centre)))
    return parts


def car(rng: np.random.Generator, g: float) -> List[Part]:
    """body (rounded or boxy), cabin (a tapered block), four wheels (tyre and hub)."""
    length, width, height = rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.55), rng.uniform(0.14, 0.24)
    wheel_r, tyre = rng.uniform(0.08, 0.13), g * rng.uniform(0.017, 0.022)
    lift = wheel_r * rng.uniform(0.5, 0.9)
    body = sweep(segment((0.0, lift + height / 2, -length / 2), (0.0, lift + height / 2, length / 2)),
                 superellipse(24, height / 2, width / 2, rng.choice([3.0, 6.0, 14.0])))
    parts: List[Part] = [(0, body)]
    cabin_l, cabin_h = length * rng.uniform(0.35, 0.6), height * rng.uniform(0.6, 1.0)
    y0 = lift + height
    cabin = sweep(segment((0.0, y0 - 0.01, 0.0), (0.0, y0 + cabin_h, 0.0)),
                  superellipse(24, width * 0.45, cabin_l / 2, rng.choice([3.0, 8.0])),
                  [1.0, rng.uniform(0.55, 0.85)], up=(1.0, 0.0, 0.0))
    parts.append((1, transform(cabin, offset=(0.0, 0.0, rng.uniform(-0.15, 0.1) * length))))
    wheelbase = length * rng.uniform(0.3, 0.4)
    tread = rng.uniform(0.6, 1.6)
    for sx in (-1, 1):
        for sz in (-1, 1):
            centre = (sx * (width / 2 - tread * tyre * 0.5), wheel_r, sz * wheelbase)
            ring = arc(wheel_r - tyre, 0, 2 * np.pi, 24, "zy", endpoint=False)
            tyre_mesh = sweep(ring, superellipse(12, tread * tyre, tyre, 3.0), closed=True, up=(1.0, 0.0, 0.0))
            hub = transform(revolve(solid([wheel_r - tyre] * 2, [-0.02, 0.02]), 20), rotation("z", np.pi / 2))
            parts += [(2, transform(tyre_mesh, offset=centre)), (2, transform(hub, offset=centre))]
    return parts


def guitar(rng: np.random.Generator, g: float) -> List[Part]:
    """body (a waisted outline, thick or thin), neck, head (straight or angled, with pegs)."""
    lower, upper, length = rng.uniform(0.16, 0.22), rng.uniform(0.7, 0.9), rng.uniform(0.45, 0.6)
    t = g * rng.uniform(0.05, 0.07)
    y = np.linspace(-length / 2, length / 2, 24)
    low = lower * np.sqrt(np.clip(1 - ((y + length * 0.18) / (length * 0.34)) ** 2, 0, 1))
    up = lower * upper * np.sqrt(np.clip(1 - ((y - length * 0.25) / (length * 0.26)) ** 2, 0, 1))
    half = np.maximum((low ** 4 + up ** 4) ** 0.25, 0.7 * lower * upper * np.sqrt(np.clip(1 - (2 * y / length) ** 2, 0, 1)))
    half[[0, -1]] = 0.0
    outline = np.concatenate([np.stack([half, y], 1), np.stack([-half[::-1], y[::-1]], 1)[1:-1]])
    body = sweep(segment((0.0, length / 2, -t / 2), (0.0, length / 2, t / 2)), outline, up=(1.0, 0.0, 0.0))
    parts: List[Part] = [(0, body)]
    neck_l, neck_w = rng.uniform(0.4, 0.6), rng.uniform(0.04, 0.06)
    parts.append((1, box((neck_w, neck_l, 0.03), (0.0, length * 0.95 + neck_l / 2, t / 2 - 0.015), 10.0)))
    head_l, angle = rng.uniform(0.1, 0.18), rng.choice([0.0, rng.uniform(0.15, 0.3)])
    place = (rotation("x", -angle), (0.0, length * 0.95 + neck_l, t / 2 - 0.015))
    parts.append((2, transform(box((neck_w * 1.6, head_l, 0.02), (0.0, head_l / 2, 0.0), 6.0), *place)))
    for i in range(3):
        for sx in (-1, 1):
            yp = head_l * (0.25 + 0.25 * i)
            parts.append((2, transform(rod((sx * neck_w * 0.8, yp, 0.0), (sx * neck_w * 1.4, yp, 0.0), 0.008), *place)))
    return parts


CATEGORIES: Dict[str, Tuple[Callable[[np.random.Generator, float], List[Part]], Tuple[str, ...]]] = {
    "airplane": (airplane, ("fuselage", "wing", "tail", "engine")),
    "bottle": (bottle, ("body", "neck", "cap")),
    "bucket": (bucket, ("body", "handle")),
    "car": (car, ("body", "cabin", "wheel")),
    "chair": (chair, ("seat", "back", "leg", "arm")),
    "guitar": (guitar, ("body", "neck", "head")),
    "lamp": (lamp, ("base", "pole", "shade")),
    "mug": (mug, ("body", "handle")),
    "rocket": (rocket, ("body", "nose", "fin")),
    "stool": (stool, ("seat", "leg", "footrest")),
    "table": (table, ("top", "leg", "stretcher")),
    "umbrella": (umbrella, ("canopy", "shaft", "handle")),
}
CATEGORY_NAMES = tuple(CATEGORIES)


def category_parts() -> Dict[str, List[int]]:
    """category -> its global part labels (the parts of all categories numbered in order, 36 in all)."""
    labels, start = {}, 0
    for name, (_, parts) in CATEGORIES.items():
        labels[name] = list(range(start, start + len(parts)))
        start += len(parts)
    return labels


# ----------------------------------------------------------------------------- sampling
def deform(parts: List[Part], rng: np.random.Generator) -> List[Part]:
    """The same small deformation of every part: a random stretch of each axis (0.85 to 1.15), a
    bend (x and z shift with the square of the height) and a gentle wave across the surface."""
    stretch = rng.uniform(0.85, 1.15, 3)
    bend = rng.uniform(-0.08, 0.08, 2)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    wave, freq, phase = rng.uniform(0.003, 0.012), rng.uniform(4.0, 9.0), rng.uniform(0, 2 * np.pi)

    def warp(v: np.ndarray) -> np.ndarray:
        v = v * stretch
        v = v + np.outer(v[:, 1] ** 2, [bend[0], 0.0, bend[1]])
        return v + wave * np.sin(freq * v @ direction + phase)[:, None] * np.roll(direction, 1)

    return [(label, (warp(vertices), triangles)) for label, (vertices, triangles) in parts]


def sample_surface(parts: Sequence[Part], n: int, rng: np.random.Generator
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points uniform by area on the parts' triangles: (points (n, 3), outward unit normals
    (n, 3), part labels (n,) int64)."""
    corners = np.concatenate([vertices[triangles] for _, (vertices, triangles) in parts])  # (T, 3, 3)
    labels = np.concatenate([np.full(len(triangles), label) for label, (_, triangles) in parts])
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    area = np.linalg.norm(cross, axis=1)
    cumulative = np.cumsum(area)
    chosen = np.minimum(np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right"), len(area) - 1)
    u, v = rng.random((2, n, 1))
    root = np.sqrt(u)
    a, b, c = corners[chosen, 0], corners[chosen, 1], corners[chosen, 2]
    points = (1 - root) * a + root * (1 - v) * b + root * v * c
    return points, cross[chosen] / area[chosen, None], labels[chosen].astype(np.int64)


def shape_parts(category: int, seed: int, index: int) -> List[Part]:
    """Shape ``index`` of category number ``category`` (in CATEGORY_NAMES order), its gauge drawn
    log-uniformly from GAUGE, deformed; part labels are the category's own (0, 1, ...)."""
    rng = np.random.default_rng([seed, category, index])
    build = CATEGORIES[CATEGORY_NAMES[category]][0]
    return deform(build(rng, float(np.exp(rng.uniform(*np.log(GAUGE))))), rng)


def clean_cloud(parts: Sequence[Part], rng: np.random.Generator, num_points: int = NUM_POINTS
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 3) centred at the mean and scaled into the unit sphere, outward normals (N, 3),
    part labels (N,)): float32, float32, int64."""
    points, normals, labels = sample_surface(parts, num_points, rng)
    return normalize_points(points).astype(np.float32), normals.astype(np.float32), labels


def clutter(parts: Sequence[Part], rng: np.random.Generator) -> List[Part]:
    """Background of a scan around the parts (label -1): a floor patch under the object and one or
    two boxes beside it."""
    vertices = np.concatenate([v for _, (v, _) in parts])
    low, high = vertices.min(0), vertices.max(0)
    centre, size = (low + high) / 2, high - low
    reach = 0.5 * max(size[0], size[2]) * rng.uniform(1.1, 1.4)
    floor = box((2 * reach, 0.01, 2 * reach), (centre[0], low[1] - 0.005, centre[2]), rng.choice([2.0, 12.0]))
    background: List[Part] = [(-1, floor)]
    for _ in range(rng.integers(1, 3)):
        angle, extent = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.35, 3) * size.max()
        place = centre[[0, 2]] + (reach + extent[0] / 2) * np.array([np.cos(angle), np.sin(angle)]) * 0.9
        background.append((-1, box(extent, (place[0], low[1] + extent[1] / 2, place[1]), 12.0)))
    return background


def visible(points: np.ndarray, view: np.ndarray, cell: float, tolerance: float) -> np.ndarray:
    """(N,) bool: the points a depth camera looking along -``view`` (unit, from the object towards
    the camera) sees, by a depth buffer of ``cell``-sized pixels: a point is seen when it lies
    within ``tolerance`` of the nearest point in its pixel."""
    side = np.cross(view, [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    up = np.cross(side, view)
    pixel = np.floor(np.stack([points @ side, points @ up], 1) / cell).astype(np.int64)
    pixel -= pixel.min(0)
    pixel_id = pixel[:, 0] * (pixel[:, 1].max() + 1) + pixel[:, 1]
    depth = -(points @ view)
    nearest = np.full(pixel_id.max() + 1, np.inf)
    np.minimum.at(nearest, pixel_id, depth)
    return depth <= nearest[pixel_id] + tolerance


def scan(parts: Sequence[Part], rng: np.random.Generator, num_points: int = NUM_POINTS) -> Dict[str, np.ndarray]:
    """ScanObjectNN-style clouds of a shape seen from one random viewpoint (elevation 15 to 45
    degrees), each (num_points, 3) float32, centred at its mean and scaled into the unit sphere:
    'objbg': the object's visible points and 20 to 40% of background (clutter that also occludes);
    'objonly': the object's points of the same scan; 'hardest': objbg turned about the vertical axis
    by a random angle and stretched by 0.85 to 1.15 per axis."""
    points, _, labels = sample_surface([*parts, *clutter(parts, rng)], 6 * num_points, rng)
    on_object = labels >= 0
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(15, 45))
    view = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)])
    size = np.ptp(points[on_object], axis=0).max()
    seen = visible(points, view, 0.02 * size, 0.03 * size)
    obj, background = points[seen & on_object], points[seen & ~on_object]
    n_background = min(len(background), int(rng.uniform(0.2, 0.4) * num_points))
    obj = obj[rng.choice(len(obj), num_points, replace=len(obj) < num_points)]
    objbg = np.concatenate([obj[n_background:], background[rng.choice(len(background), n_background, replace=False)]])
    turned = objbg @ rotation("y", rng.uniform(0, 2 * np.pi)).T * rng.uniform(0.85, 1.15, 3)
    return {name: normalize_points(cloud).astype(np.float32)
            for name, cloud in (("objbg", objbg), ("objonly", obj), ("hardest", turned))}


def make_shape(category: int, seed: int, index: int, num_points: int = NUM_POINTS) -> Dict[str, np.ndarray]:
    """What is written of one shape: 'points' (N, 3), 'normals' (N, 3), 'parts' (N,) (global part
    labels) of the clean cloud, and the scans 'objbg', 'objonly', 'hardest' (N, 3) (see ``scan``)."""
    parts = shape_parts(category, seed, index)
    points, normals, labels = clean_cloud(parts, np.random.default_rng([seed, category, index, 1]), num_points)
    offset = category_parts()[CATEGORY_NAMES[category]][0]
    return {"points": points, "normals": normals, "parts": labels + offset,
            **scan(parts, np.random.default_rng([seed, category, index, 2]), num_points)}


# ----------------------------------------------------------------------------- writing
SCAN_FILES = {"objbg": "main_split/{}_objectdataset.h5", "objonly": "main_split_nobg/{}_objectdataset.h5",
              "hardest": "main_split/{}_objectdataset_augmentedrot_scale75.h5"}
taxonomy_id = _digits.taxonomy_id  # category c -> '0000000c', as the digits'


def model_id(category: int, index: int) -> str:
    """ShapeNet model id of a shape, e.g. 'chair0012'."""
    return f"{CATEGORY_NAMES[category]}{index:04d}"


def shapes_paths(out_dir: PathLike) -> Dict[str, Path]:
    """Where a build in ``out_dir`` puts each dataset (the roots the real readers take)."""
    out = Path(out_dir)
    return {
        "root": out,
        "manifest": out / MANIFEST,
        "shapenet_list": out / "ShapeNet55-34" / "ShapeNet-55",
        "shapenet_pc": out / "ShapeNet55-34" / "shapenet_pc",
        "modelnet": out / "ModelNet" / "modelnet40_normal_resampled",
        "scanobjectnn": out / "ScanObjectNN",
        "shapenetpart": out / "shapenetcore_partanno_segmentation_benchmark_v0_normal",
    }


def split_of(index: int, per_category: int) -> str:
    """'train' for the first 75 % of a category's shapes, else 'test'."""
    return "train" if index < round((1 - TEST_FRACTION) * per_category) else "test"


def _write(root: Path, seed: int, per_category: int) -> Dict[str, Dict[str, int]]:
    """Write every layout under ``root``; returns the shapes per split and category."""
    paths = shapes_paths(root)
    for key in ("shapenet_list", "shapenet_pc", "modelnet"):
        paths[key].mkdir(parents=True)
    for name in SCAN_FILES.values():
        (paths["scanobjectnn"] / name).parent.mkdir(parents=True, exist_ok=True)
    (paths["shapenetpart"] / "train_test_split").mkdir(parents=True)
    (paths["shapenetpart"] / "synsetoffset2category.txt").write_text(
        "".join(f"{name}\t{taxonomy_id(c)}\n" for c, name in enumerate(CATEGORY_NAMES)))
    (paths["modelnet"] / "modelnet40_shape_names.txt").write_text("".join(n + "\n" for n in CATEGORY_NAMES))
    splits = {split: {"npy": [], "modelnet": [], "labels": [], "clouds": [], "scans": {v: [] for v in SCAN_FILES},
                      "parts": []} for split in ("train", "test")}
    part_lists: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    for c in range(len(CATEGORY_NAMES)):
        (paths["shapenetpart"] / taxonomy_id(c)).mkdir()
        for i in range(per_category):
            shape = make_shape(c, seed, i)
            split = split_of(i, per_category)
            s = splits[split]
            name = model_id(c, i)
            np.save(paths["shapenet_pc"] / f"{taxonomy_id(c)}-{name}.npy", shape["points"])
            rows = np.column_stack([shape["points"], shape["normals"], shape["parts"]])
            (paths["shapenetpart"] / taxonomy_id(c) / f"{name}.txt").write_text(
                "".join(PARTSEG_ROW_FORMAT % row for row in map(tuple, rows.tolist())))
            part_split = "test" if split == "test" else "train" if i < PART_LABELLED else "val"
            part_lists[part_split].append(f"shape_data/{taxonomy_id(c)}/{name}")
            s["npy"].append(f"{taxonomy_id(c)}-{name}.npy")
            s["modelnet"].append(f"{CATEGORY_NAMES[c]}_{i:04d}")
            s["labels"].append(c)
            s["clouds"].append(np.concatenate([shape["points"], shape["normals"]], 1))
            for variant in SCAN_FILES:
                s["scans"][variant].append(shape[variant])
    for split, s in splits.items():
        (paths["shapenet_list"] / f"{split}.txt").write_text("".join(n + "\n" for n in s["npy"]))
        (paths["modelnet"] / f"modelnet40_{split}.txt").write_text("".join(n + "\n" for n in s["modelnet"]))
        labels = np.array(s["labels"], dtype=np.int64)
        with open(paths["modelnet"] / f"modelnet40_{split}_{NUM_POINTS}pts_fps.dat", "wb") as f:
            pickle.dump([s["clouds"], [labels[i:i + 1] for i in range(len(labels))]], f, protocol=4)
        for variant, name in SCAN_FILES.items():
            with h5py.File(paths["scanobjectnn"] / name.format("training" if split == "train" else "test"), "w") as f:
                f.create_dataset("data", data=np.stack(s["scans"][variant]), track_times=False)
                f.create_dataset("label", data=labels, track_times=False)
    for split, entries in part_lists.items():
        (paths["shapenetpart"] / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return {split: {name: s["labels"].count(c) for c, name in enumerate(CATEGORY_NAMES)} for split, s in splits.items()}


def _manifest(counts: Dict[str, Dict[str, int]]) -> dict:
    return {
        "num_points": NUM_POINTS,
        "categories": {name: dict(zip(parts, category_parts()[name])) for name, (_, parts) in CATEGORIES.items()},
        "split_sizes": {split: sum(c.values()) for split, c in counts.items()},
        "class_counts": counts,
    }


def build_demo_shapes(out_dir: PathLike, seed: int = 0, force: bool = False,
                      shapes_per_category: int = SHAPES_PER_CATEGORY) -> Dict[str, Path]:
    """Write the shapes in every layout under ``out_dir``; returns ``shapes_paths(out_dir)``.

    Returns at once when ``out_dir`` already holds a build of this version, seed and size (unless
    ``force``). An existing ``out_dir`` is replaced only if it is empty or a previous build (has a
    manifest); anything else raises FileExistsError.
    """
    if shapes_per_category < 2:
        raise ValueError(f"shapes_per_category must be at least 2 (a train and a test shape), got {shapes_per_category}")
    key = {"version": VERSION, "seed": seed, "shapes_per_category": shapes_per_category}
    out = _digits.build_once(out_dir, "demo-shapes", key, force,
                             lambda tmp: _manifest(_write(tmp, seed, shapes_per_category)))
    return shapes_paths(out)


def main() -> None:
    _digits.builder_main(__doc__, build_demo_shapes, ".cache/demo_shapes", "--shapes-per-category",
                         SHAPES_PER_CATEGORY, "shapes per category (three quarters train, one test)")


if __name__ == "__main__":
    main()
