"""Farthest point sampling and k nearest neighbours as Triton kernels (the ``triton`` backends).

Both give exactly the references' results (:func:`pointcloud.ops.fps_torch`,
:func:`pointcloud.ops.knn_torch`): the same fp32 squared distances, the lowest index winning ties.

FPS: one program per cloud keeps the whole cloud and its running distance to the chosen set in
registers and runs the n sequential picks inside the kernel (one launch instead of n steps of
several launches each). Work: n x N distance updates and arg-maxes per cloud, one block-wide
reduction per pick.

kNN: one program per (cloud, block of queries) holds the queries' distances to every reference
point in registers and takes the k nearest by k rounds of arg-min (nearest first, ties to the
lower index, like a stable sort). Work: k x N compares per query; no sort, no (B, M, N) tensor
in memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Largest cloud held in registers (points per program); 32 warps x 32 lanes x 32 values.
MAX_POINTS = 32768
# Distances held per program in the kNN kernel (queries x reference points).
KNN_TILE = 16384


def _warps_for(elements: int) -> int:
    """Warps so that each thread holds at most ~32 values of a tile (1 to 32 warps)."""
    return max(1, min(32, triton.next_power_of_2(elements) // (32 * 32)))


def _check_size(n_points: int, op: str) -> None:
    if n_points > MAX_POINTS:
        raise ValueError(f"{op} backend 'triton' holds a cloud in registers and takes at most {MAX_POINTS} "
                         f"points, got {n_points}; set runtime.backends.{op}: torch for larger clouds")


@triton.jit
def _fps_kernel(xyz_ptr, out_ptr, N, n_samples, s_b, s_n, s_c, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    mask = offs < N
    base = xyz_ptr + pid * s_b
    x = tl.load(base + offs * s_n, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(base + offs * s_n + s_c, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(base + offs * s_n + 2 * s_c, mask=mask, other=0.0).to(tl.float32)
    # padding is never the farthest point
    min_dist = tl.where(mask, float("inf"), float("-inf"))
    far = tl.full((), 0, tl.int32)
    for i in range(0, n_samples):
        tl.store(out_ptr + pid * n_samples + i, far.to(tl.int64))
        cx = tl.load(base + far * s_n).to(tl.float32)
        cy = tl.load(base + far * s_n + s_c).to(tl.float32)
        cz = tl.load(base + far * s_n + 2 * s_c).to(tl.float32)
        dx = x - cx
        dy = y - cy
        dz = z - cz
        dist = dx * dx + dy * dy + dz * dz
        min_dist = tl.minimum(min_dist, dist)
        far = tl.argmax(min_dist, axis=0, tie_break_left=True)


def fps_triton(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """xyz: (B, N, 3) -> indices (B, n) int64, the same as :func:`pointcloud.ops.fps_torch`."""
    b, n_points, _ = xyz.shape
    _check_size(n_points, "fps")
    out = torch.empty(b, n, device=xyz.device, dtype=torch.int64)
    block = triton.next_power_of_2(n_points)
    _fps_kernel[(b,)](xyz, out, n_points, n, *xyz.stride(), BLOCK_N=block, num_warps=_warps_for(block))
    return out


@triton.jit
def _knn_kernel(q_ptr, r_ptr, out_ptr, M, N, K, s_qb, s_qm, s_qc, s_rb, s_rn, s_rc,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    q = q_ptr + pid_b * s_qb + offs_m * s_qm
    r = r_ptr + pid_b * s_rb + offs_n * s_rn
    dist = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c in tl.static_range(3):
        qc = tl.load(q + c * s_qc, mask=mask_m, other=0.0).to(tl.float32)
        rc = tl.load(r + c * s_rc, mask=mask_n, other=0.0).to(tl.float32)
        diff = qc[:, None] - rc[None, :]
        dist += diff * diff
    dist = tl.where(mask_n[None, :], dist, float("inf"))
    out = out_ptr + (pid_b * M + offs_m) * K
    for j in range(0, K):
        nearest = tl.argmin(dist, axis=1, tie_break_left=True)
        tl.store(out + j, nearest.to(tl.int64), mask=mask_m)
        dist = tl.where(offs_n[None, :] == nearest[:, None], float("inf"), dist)


def knn_triton(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """query: (B, M, 3), ref: (B, N, 3) -> (B, M, k) int64, the same as :func:`pointcloud.ops.knn_torch`."""
    b, m, _ = query.shape
    n_points = ref.shape[1]
    _check_size(n_points, "knn")
    block_n = triton.next_power_of_2(n_points)
    block_m = max(1, min(triton.next_power_of_2(m), KNN_TILE // block_n))
    out = torch.empty(b, m, k, device=query.device, dtype=torch.int64)
    _knn_kernel[(b, triton.cdiv(m, block_m))](query, ref, out, m, n_points, k, *query.stride(), *ref.stride(),
                                             BLOCK_M=block_m, BLOCK_N=block_n,
                                             num_warps=_warps_for(block_m * block_n))
    return out
