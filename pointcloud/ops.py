"""Farthest point sampling and k nearest neighbours (the batched gather is :func:`map_core.tokens.gather_tokens`).

Each op has a pure-PyTorch reference (CPU and GPU, batched) registered as the ``torch`` backend of
:mod:`map_core.backends`, the project's Triton kernels (``triton``, the ``auto`` choice on CUDA,
:mod:`pointcloud.kernels`), and the optional CUDA packages ``pointnet2_ops`` (FPS) and
``knn_cuda`` (kNN), used only when named (``runtime.backends.fps`` / ``.knn``).
"""
from __future__ import annotations

from typing import Optional

import torch

from map_core import backends

# kNN reference: at most this many (query, reference) pairs per chunk (about 0.8 GB of float32 work).
_KNN_PAIRS_PER_CHUNK = 1 << 26


def fps_torch(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """Reference farthest point sampling. xyz: (B, N, 3) -> indices (B, n) int64.

    Starts at index 0; each next index is the point whose squared distance to the chosen set is
    largest, the lowest index winning ties (``argmax`` returns the first maximum).
    """
    B, N, _ = xyz.shape
    batch = torch.arange(B, device=xyz.device)
    idx = torch.zeros(B, n, dtype=torch.long, device=xyz.device)
    min_dist = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    for i in range(n):
        idx[:, i] = farthest
        centre = xyz[batch, farthest].unsqueeze(1)  # (B, 1, 3)
        min_dist = torch.minimum(min_dist, ((xyz - centre) ** 2).sum(-1))
        farthest = min_dist.argmax(-1)
    return idx


def _fps_pointnet2(xyz: torch.Tensor, n: int) -> torch.Tensor:
    from pointnet2_ops import pointnet2_utils

    return pointnet2_utils.furthest_point_sample(xyz.float().contiguous(), n).long()


def fps(xyz: torch.Tensor, n: int, backend: Optional[str] = None) -> torch.Tensor:
    """Farthest point sampling. xyz: (B, N, 3) -> indices (B, n) int64 (first index 0).

    ``backend``: a registered name or ``auto``; default the configured one (``runtime.backends.fps``).
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"fps expects xyz of shape (B, N, 3), got {tuple(xyz.shape)}")
    if not 0 < n <= xyz.shape[1]:
        raise ValueError(f"fps: cannot sample {n} points from clouds of {xyz.shape[1]} points")
    return backends.get("fps", xyz.device, backend)(xyz, n)


def knn_torch(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Reference kNN. query: (B, M, 3), ref: (B, N, 3) -> indices into ref (B, M, k), nearest first.

    Exact squared distances (differences, not the ``|a|^2 + |b|^2 - 2ab`` expansion, so a point equal
    to the query is at distance 0) and a stable sort, so ties go to the lower index. Queries are
    processed in chunks to bound memory.
    """
    B, M, _ = query.shape
    N = ref.shape[1]
    chunk = max(1, _KNN_PAIRS_PER_CHUNK // max(1, B * N))
    out = []
    for start in range(0, M, chunk):
        q = query[:, start:start + chunk]  # (B, m, 3)
        dist = ((q.unsqueeze(2) - ref.unsqueeze(1)) ** 2).sum(-1)  # (B, m, N)
        out.append(torch.sort(dist, dim=-1, stable=True).indices[..., :k])
    return torch.cat(out, dim=1)


def _knn_cuda(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    import knn_cuda

    _, idx = knn_cuda.KNN(k=k, transpose_mode=True)(ref.float().contiguous(), query.float().contiguous())
    return idx.long()


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, backend: Optional[str] = None) -> torch.Tensor:
    """k nearest neighbours. query: (B, M, 3), ref: (B, N, 3) -> indices into ref (B, M, k) int64,
    nearest first, ties to the lower index. ``backend``: as for :func:`fps`."""
    if query.dim() != 3 or ref.dim() != 3 or query.shape[0] != ref.shape[0] or query.shape[-1] != ref.shape[-1]:
        raise ValueError(f"knn expects query (B, M, 3) and ref (B, N, 3), got {tuple(query.shape)} "
                         f"and {tuple(ref.shape)}")
    if not 0 < k <= ref.shape[1]:
        raise ValueError(f"knn: k={k} must be in [1, {ref.shape[1]}] (points in ref)")
    return backends.get("knn", query.device, backend)(query, ref, k)


backends.register("fps", "triton", "pointcloud.kernels:fps_triton", package="triton", auto=True, interpretable=True)
backends.register("fps", "torch", fps_torch, devices=None)
backends.register("fps", "pointnet2_ops", _fps_pointnet2, package="pointnet2_ops.pointnet2_utils")
backends.register("knn", "triton", "pointcloud.kernels:knn_triton", package="triton", auto=True, interpretable=True)
backends.register("knn", "torch", knn_torch, devices=None)
backends.register("knn", "knn_cuda", _knn_cuda, package="knn_cuda")
