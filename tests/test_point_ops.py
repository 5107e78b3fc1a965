"""FPS, kNN and gather against brute-force definitions written out point by point."""
import importlib.util

import pytest
import torch

from map_core.tokens import gather_tokens
from pointcloud import ops


def brute_fps(cloud: list, n: int) -> list:
    """pointnet2 semantics on one cloud: start at 0, then the farthest from the chosen set, lowest index on ties."""
    chosen = [0]
    best = [float("inf")] * len(cloud)
    while len(chosen) < n:
        last = cloud[chosen[-1]]
        for j, p in enumerate(cloud):
            best[j] = min(best[j], sum((a - b) ** 2 for a, b in zip(p, last)))
        top = max(best)
        chosen.append(best.index(top))
    return chosen


def brute_knn(query: list, ref: list, k: int) -> list:
    """For each query point, ref indices sorted by (squared distance, index)."""
    out = []
    for q in query:
        d = [(sum((a - b) ** 2 for a, b in zip(q, r)), j) for j, r in enumerate(ref)]
        out.append([j for _, j in sorted(d)[:k]])
    return out


def mixed_batch() -> torch.Tensor:
    """(3, 40, 3) float64: a generic cloud, a cloud on a small integer grid with duplicates (ties),
    and a cloud at a very different scale."""
    g = torch.Generator().manual_seed(0)
    generic = torch.randn(40, 3, generator=g, dtype=torch.float64)
    grid = torch.randint(0, 3, (40, 3), generator=g).double()
    grid[5] = grid[0]
    grid[17] = grid[3]
    scaled = 1000.0 * torch.rand(40, 3, generator=g, dtype=torch.float64)
    return torch.stack([generic, grid, scaled])


@pytest.mark.parametrize("n", [1, 7, 40])
def test_fps_matches_brute_force(n):
    xyz = mixed_batch()
    idx = ops.fps(xyz, n)
    assert idx.dtype == torch.int64 and idx.shape == (3, n)
    for b in range(3):
        assert idx[b].tolist() == brute_fps(xyz[b].tolist(), n)


def test_fps_equidistant_and_duplicate_points_pick_lowest_index():
    # point 0 at the origin, points 1..4 all at distance 1: the first pick after 0 must be 1
    square = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [1, 0, 0]], dtype=torch.float32)
    idx = ops.fps(square[None], 6)[0].tolist()
    assert idx == brute_fps(square.tolist(), 6)
    assert idx == [0, 1, 2, 3, 4, 0]  # 5 duplicates 1; once every distance is 0 the first index wins
    same = torch.zeros(1, 5, 3)
    assert ops.fps(same, 5)[0].tolist() == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("k", [1, 5, 40])
def test_knn_matches_brute_force(k):
    ref = mixed_batch()
    query = ref[:, ::3] + 0.0  # query points that are also in ref
    idx = ops.knn(query, ref, k)
    assert idx.dtype == torch.int64 and idx.shape == (3, query.shape[1], k)
    for b in range(3):
        assert idx[b].tolist() == brute_knn(query[b].tolist(), ref[b].tolist(), k)


def test_knn_query_in_ref_is_its_own_nearest():
    ref = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(1)) * 100
    idx = ops.knn(ref, ref, 1)[..., 0]
    assert torch.equal(idx, torch.arange(50).expand(2, 50))


def test_knn_chunking_gives_the_same_answer(monkeypatch):
    ref = mixed_batch()
    full = ops.knn(ref, ref, 6)
    monkeypatch.setattr(ops, "_KNN_PAIRS_PER_CHUNK", 7)  # chunks of a single query
    assert torch.equal(ops.knn(ref, ref, 6), full)


def test_backend_errors():
    xyz = torch.randn(1, 10, 3)
    with pytest.raises(ValueError, match="unknown fps backend 'cuda_magic'"):
        ops.fps(xyz, 2, backend="cuda_magic")
    if importlib.util.find_spec("pointnet2_ops") is None:
        with pytest.raises(ImportError, match="pointnet2_ops"):
            ops.fps(xyz, 2, backend="pointnet2_ops")
    if importlib.util.find_spec("knn_cuda") is None:
        with pytest.raises(ImportError, match="knn_cuda"):
            ops.knn(xyz, xyz, 2, backend="knn_cuda")
    with pytest.raises(ValueError, match="k=11"):
        ops.knn(xyz, xyz, 11)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_backends_match_reference_on_gpu():
    xyz = torch.rand(4, 2048, 3, generator=torch.Generator().manual_seed(2)).cuda()
    assert torch.equal(ops.fps(xyz, 128), ops.fps(xyz, 128))
    centres = gather_tokens(xyz, ops.fps(xyz, 128))

    def distances(idx):  # (B, M, k) -> neighbour distances; near-equal ones may swap between kernels
        return (gather_tokens(xyz, idx) - centres.unsqueeze(2)).norm(dim=-1)

    ref = distances(ops.knn(centres, xyz, 32))
    assert torch.allclose(distances(ops.knn(centres, xyz, 32)), ref, atol=1e-5)
