"""The selective scan as Triton kernels: a forward and a backward pass with the reference's semantics.

Same arguments and results as :func:`map_core.ssm.selective_scan_ref` (``mamba_ssm`` conventions)
plus ``reverse`` (scan from the last step to the first, as the reference on flipped inputs, with
no flipped copy). Inputs may be fp32, fp16 or bf16 with any strides: the mixers pass
time-major views ((B, L, D) memory seen as (B, D, L)), so every load of one step is contiguous
over channels. The state and all arithmetic are fp32.

Both kernels run one program per (batch row, block of ``BLOCK_D`` channels) and walk the sequence
one step at a time. The (N, BLOCK_D) state is laid out with the channels across threads and the N
states of a channel inside one thread, so the sums over N (the output, the gradients of delta and
u) need no communication between threads.

Forward: keeps the state in registers, loads the next step's inputs while computing the current
one, writes the state every ``CHUNK`` steps as a checkpoint (fp32) and, for the backward, the
output before the z gate (in the input dtype).

Backward: walks the chunks from last to first. For each it recomputes the chunk's states from its
checkpoint into a (CHUNK, N, BLOCK_D) register tile, then runs the adjoint recurrence backwards in
time, ``g_t = dy_t C_t + q_{t+1}`` with ``q_t = exp(delta_t A) g_t``, which needs only the step's
own exponential. dB and dC (sums over channels) are reduced across the program's threads and
written as one partial per channel block (summed afterwards: no atomics, deterministic); dA, dD
and d(delta_bias) are accumulated in registers.

Along the length (when the grid above has too few programs for the GPU, as with few rows of a long
sequence; see :func:`segments`): the sequence is cut into segments, each scanned by its own
program. The recurrence is linear in the state (forward) and in the adjoint (backward), so a first
pass runs every segment from zero and keeps its end state (backward: the adjoint it hands the
segment before) and its summed step size; the second pass starts each segment from the earlier
(backward: later) segments' results decayed by exp(A * summed step size) and computes as above.
More programs in flight, at the price of the first pass.

Floors (MAP-Base shapes: batch 64, d_inner 1536, N 16, length 196, bf16): the bytes that must move
(read u, delta, z, B, C and dy, write y, du, ddelta, dz, dB, dC) are ~430 MB; exp(delta A) is
308 M exponentials per pass. This design computes it once in the forward and twice in the
backward (recomputation and adjoint). Measured numbers are in BENCHMARKS.md.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from map_core.kernels import empty_like_layout

LOG2E = tl.constexpr(math.log2(math.e))
LN2 = tl.constexpr(math.log(2.0))
# Channels per program: one per thread (32 per warp); more warps, fewer programs.
FWD_BLOCK_D = 64
FWD_WARPS = 1
BWD_BLOCK_D = 32
BWD_WARPS = 1
# Steps between saved states; the backward keeps one chunk of states in registers.
CHUNK = 4
# Steps per program along the length (a multiple of CHUNK). None: chosen per call by
# `segments` (the default); 0: one program walks the whole sequence; k > 0: segments of k steps.
SEGMENT_STEPS: Optional[int] = None
# The automatic choice (H200, BENCHMARKS.md "The selective scan split along the length"): a grid
# of few programs walks a long sequence with most of the GPU idle. Split when the backward grid
# has fewer than SPLIT_BELOW programs per SM, into enough segments for about SPLIT_TARGET per SM,
# each a power of two of at least MIN_SEGMENT steps (few distinct lengths: each is its own
# compiled kernel).
# Measured: 8 x 1536 x 1024 (384 programs on 132 SMs) fwd + bwd 2.40 -> 1.39 ms with 8 segments of
# 128 steps; 16 x 1536 x 784 (768 programs) and every MAP-Base / PointMAP shape were slower split.
SPLIT_BELOW = 4
SPLIT_TARGET = 24
MIN_SEGMENT = 64


def segments(batch: int, dim: int, length: int, sms: int) -> Tuple[int, int]:
    """(steps per segment, segments) of a scan of ``batch`` rows of ``dim`` channels and ``length``
    steps on a GPU of ``sms`` multiprocessors: (0, 1) when one program walks the whole sequence."""
    seg = SEGMENT_STEPS
    if seg is None:
        programs = batch * triton.cdiv(dim, BWD_BLOCK_D)
        if programs >= SPLIT_BELOW * sms or length < 2 * MIN_SEGMENT:
            return 0, 1
        wanted = triton.cdiv(SPLIT_TARGET * sms, programs)
        seg = max(MIN_SEGMENT, triton.next_power_of_2(triton.cdiv(length, wanted)))
    if seg <= 0 or length <= seg:
        return 0, 1
    if seg % CHUNK:
        raise ValueError(f"SEGMENT_STEPS={seg} must be a multiple of CHUNK={CHUNK}")
    return seg, triton.cdiv(length, seg)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device``; Triton's CPU interpreter counts as one."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with its default threshold 20
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _step_index(s, L, REVERSE: tl.constexpr):
    """The time index of processing step s."""
    return L - 1 - s if REVERSE else s


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, y_ptr, ckpt_ptr, last_ptr,
    seg_ptr, dsum_ptr,
    L, DIM, NSTATE, N_CHUNKS, s_ad, s_an,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr, STORE_CKPT: tl.constexpr,
    STORE_LAST: tl.constexpr, SEG: tl.constexpr = 0, MODE: tl.constexpr = 0,
):
    """out and y (the output before the z gate; written when STORE_CKPT and HAS_Z) share out's
    strides. A (D, N) has strides s_ad, s_an; time-invariant B / C (D, N) pass their strides as
    (s_bb, s_bn) / (s_cb, s_cn). ckpt (B, N_CHUNKS, N, D) and last (B, N, D) are fp32.

    Along the length (``SEG`` > 0, a multiple of CHUNK): program (b, d block, j) takes the steps
    [j SEG, (j + 1) SEG). MODE 1 runs its segment from a zero state and writes only the end state
    (seg (B, segments, N, D)) and the sum of its step sizes (dsum (B, segments, D)); MODE 2 starts
    from the true state, combined from the earlier segments' (the decay over segment i is
    exp(A dsum_i)), and writes everything MODE 0 (one program per row) writes."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < DIM
    mask_n = offs_n < NSTATE
    mask_nd = mask_n[:, None] & mask_d[None, :]
    nd_offs = offs_n[:, None] * DIM + offs_d[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * s_an + offs_d[None, :] * s_ad, mask=mask_nd, other=0.0) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if not VAR_B:
        B_fix = tl.load(B_ptr + offs_n[:, None] * s_bn + offs_d[None, :] * s_bb, mask=mask_nd, other=0.0).to(tl.float32)
    if not VAR_C:
        C_fix = tl.load(C_ptr + offs_n[:, None] * s_cn + offs_d[None, :] * s_cb, mask=mask_nd, other=0.0).to(tl.float32)
    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    d_row = delta_ptr + pid_b * s_db + offs_d * s_dd
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    o_off = pid_b * s_ob + offs_d * s_od
    b_col = B_ptr + pid_b * s_bb + offs_n * s_bn
    c_col = C_ptr + pid_b * s_cb + offs_n * s_cn
    ckpt_tile = ckpt_ptr + pid_b * N_CHUNKS * NSTATE * DIM + nd_offs

    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if SEG > 0:
        seg = tl.program_id(2)
        n_seg = tl.cdiv(L, SEG)
        s_start = seg * SEG
        s_end = tl.minimum(L, s_start + SEG)
        seg_row = seg_ptr + pid_b * n_seg * NSTATE * DIM + nd_offs
        dsum_row = dsum_ptr + pid_b * n_seg * DIM + offs_d
        if MODE == 2:  # the state before this segment: the earlier segments' end states, decayed
            for i in range(0, seg):
                decay = tl.exp2(tl.load(dsum_row + i * DIM, mask=mask_d, other=0.0)[None, :] * A2)
                h = decay * h + tl.load(seg_row + i * NSTATE * DIM, mask=mask_nd, other=0.0)
        else:
            dsum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    else:
        s_start = 0
        s_end = L
    # the inputs of the first step, then those of step s + 1 while step s is computed
    t = _step_index(s_start, L, REVERSE)
    u_nx = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0)
    d_nx = tl.load(d_row + t * s_dl, mask=mask_d, other=0.0)
    if HAS_Z:
        z_nx = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0)
    if VAR_B:
        b_nx = tl.load(b_col + t * s_bl, mask=mask_n, other=0.0)
    if VAR_C:
        c_nx = tl.load(c_col + t * s_cl, mask=mask_n, other=0.0)
    for s in range(s_start, s_end):
        t = _step_index(s, L, REVERSE)
        u = u_nx.to(tl.float32)
        dt = d_nx.to(tl.float32)
        if HAS_Z:
            zz = z_nx.to(tl.float32)
        if VAR_B:
            Bv = b_nx.to(tl.float32)[:, None]
        else:
            Bv = B_fix
        if VAR_C:
            Cv = c_nx.to(tl.float32)[:, None]
        else:
            Cv = C_fix
        more = s + 1 < s_end
        t_nx = _step_index(s + 1, L, REVERSE)
        u_nx = tl.load(u_row + t_nx * s_ul, mask=mask_d & more, other=0.0)
        d_nx = tl.load(d_row + t_nx * s_dl, mask=mask_d & more, other=0.0)
        if HAS_Z:
            z_nx = tl.load(z_row + t_nx * s_zl, mask=mask_d & more, other=0.0)
        if VAR_B:
            b_nx = tl.load(b_col + t_nx * s_bl, mask=mask_n & more, other=0.0)
        if VAR_C:
            c_nx = tl.load(c_col + t_nx * s_cl, mask=mask_n & more, other=0.0)

        if STORE_CKPT:
            if s % CHUNK == 0:
                tl.store(ckpt_tile + (s // CHUNK) * NSTATE * DIM, h, mask=mask_nd)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        h = tl.exp2(dt[None, :] * A2) * h + (dt * u)[None, :] * Bv
        if MODE == 1:
            dsum += tl.where(mask_d, dt, 0.0)
        else:
            y = tl.sum(h * Cv, axis=0)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                if STORE_CKPT:
                    tl.store(y_ptr + o_off + t * s_ol, y.to(y_ptr.dtype.element_ty), mask=mask_d)
                y = y * zz * tl.sigmoid(zz)
            tl.store(out_ptr + o_off + t * s_ol, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    if MODE == 1:
        tl.store(seg_row + seg * NSTATE * DIM, h, mask=mask_nd)
        tl.store(dsum_row + seg * DIM, dsum, mask=mask_d)
    elif STORE_LAST:
        last_mask = mask_nd
        if SEG > 0:
            last_mask = mask_nd & (seg == n_seg - 1)
        tl.store(last_ptr + pid_b * NSTATE * DIM + nd_offs, h, mask=last_mask)


@triton.jit
def _scan_adjoint_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, seg_ptr, dsum_ptr,
    L, DIM, NSTATE, s_ad, s_an, s_db, s_dd, s_dl, s_cb, s_cn, s_cl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SEG: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    VAR_C: tl.constexpr,
):
    """The backward's first pass along the length: program (b, d block, j) runs the adjoint
    recurrence q_t = exp(delta_t A) (q_{t+1} + dy_t C_t) over segment j's steps from zero, and
    writes the adjoint it hands the segment before (seg (B, segments, N, D) fp32) and the sum of its
    step sizes (dsum (B, segments, D) fp32). The recurrence is linear in q, so the true adjoint at
    any boundary is these, decayed by exp(A dsum) per segment and summed."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    seg = tl.program_id(2)
    n_seg = tl.cdiv(L, SEG)
    mask_d = offs_d < DIM
    mask_n = offs_n < NSTATE
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * s_an + offs_d[None, :] * s_ad, mask=mask_nd, other=0.0) * LOG2E
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if not VAR_C:
        C_fix = tl.load(C_ptr + offs_n[:, None] * s_cn + offs_d[None, :] * s_cb, mask=mask_nd, other=0.0).to(tl.float32)
    d_row = delta_ptr + pid_b * s_db + offs_d * s_dd
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    g_row = dout_ptr + pid_b * s_gb + offs_d * s_gd
    c_col = C_ptr + pid_b * s_cb + offs_n * s_cn
    q = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dsum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    s_start = seg * SEG
    s_end = tl.minimum(L, s_start + SEG)
    for i in range(0, s_end - s_start):
        t = _step_index(s_end - 1 - i, L, REVERSE)
        dt = tl.load(d_row + t * s_dl, mask=mask_d, other=0.0).to(tl.float32)
        dy = tl.load(g_row + t * s_gl, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_d, dt, 0.0)
        if HAS_Z:
            zz = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        if VAR_C:
            Cv = tl.load(c_col + t * s_cl, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        else:
            Cv = C_fix
        q = tl.exp2(dt[None, :] * A2) * (q + dy[None, :] * Cv)
        dsum += dt
    nd_offs = offs_n[:, None] * DIM + offs_d[None, :]
    tl.store(seg_ptr + (pid_b * n_seg + seg) * NSTATE * DIM + nd_offs, q, mask=mask_nd)
    tl.store(dsum_ptr + (pid_b * n_seg + seg) * DIM + offs_d, dsum, mask=mask_d)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, y_ptr, ckpt_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, seg_ptr, dsum_ptr,
    L, DIM, NSTATE, N_CHUNKS, BATCH, s_ad, s_an,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_zb, s_zd, s_zl,
    s_gb, s_gd, s_gl, s_yb, s_yd, s_yl, s_xb, s_xd, s_xl,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_DLAST: tl.constexpr,
    SEG: tl.constexpr = 0,
):
    """Gradients. dout: strides s_g*; y (the forward's output before the gate): s_y*; du, ddelta,
    dz: one layout, strides s_x*. dA, dD, dbias: fp32 per batch row and segment ((segments x B, N,
    D), (segments x B, D), (segments x B, D)), summed by the caller; dB, dC: fp32 (D blocks, B, N, L)
    partials when time-varying, else (segments x B, N, D).

    Along the length (``SEG`` > 0, as in the forward): program (b, d block, j) computes the
    gradients of segment j's steps, starting from the true adjoint, combined from the later
    segments' local adjoints (seg, dsum: :func:`_scan_adjoint_kernel`) and the last state's gradient."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, CHUNK)
    mask_d = offs_d < DIM
    mask_n = offs_n < NSTATE
    mask_nd = mask_n[:, None] & mask_d[None, :]
    nd_offs = offs_n[:, None] * DIM + offs_d[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * s_an + offs_d[None, :] * s_ad, mask=mask_nd, other=0.0) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if not VAR_B:
        B_fix = tl.load(B_ptr + offs_n[:, None] * s_bn + offs_d[None, :] * s_bb, mask=mask_nd, other=0.0).to(tl.float32)
        dB_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if not VAR_C:
        C_fix = tl.load(C_ptr + offs_n[:, None] * s_cn + offs_d[None, :] * s_cb, mask=mask_nd, other=0.0).to(tl.float32)
        dC_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if HAS_DLAST:  # g at the last step gets the last state's gradient
        q = tl.load(dlast_ptr + pid_b * NSTATE * DIM + nd_offs, mask=mask_nd, other=0.0)
    else:
        q = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if SEG > 0:
        seg = tl.program_id(2)
        n_seg = tl.cdiv(L, SEG)
        s_start = seg * SEG
        s_end = tl.minimum(L, s_start + SEG)
        seg_row = seg_ptr + pid_b * n_seg * NSTATE * DIM + nd_offs
        dsum_row = dsum_ptr + pid_b * n_seg * DIM + offs_d
    else:
        seg = 0
        s_start = 0
        s_end = L
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    d_row = delta_ptr + pid_b * s_db + offs_d * s_dd
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    g_row = dout_ptr + pid_b * s_gb + offs_d * s_gd
    y_row = y_ptr + pid_b * s_yb + offs_d * s_yd
    x_off = pid_b * s_xb + offs_d * s_xd
    b_col = B_ptr + pid_b * s_bb + offs_n * s_bn
    c_col = C_ptr + pid_b * s_cb + offs_n * s_cn
    ckpt_tile = ckpt_ptr + pid_b * N_CHUNKS * NSTATE * DIM + nd_offs
    part = (pid_d * BATCH + pid_b) * NSTATE * L + offs_n * L

    if SEG > 0:  # the adjoint entering this segment: the later segments', decayed
        for i in range(0, n_seg - 1 - seg):
            j = n_seg - 1 - i
            decay = tl.exp2(tl.load(dsum_row + j * DIM, mask=mask_d, other=0.0)[None, :] * A2)
            q = decay * q + tl.load(seg_row + j * NSTATE * DIM, mask=mask_nd, other=0.0)
    c_start = s_start // CHUNK
    c_end = tl.cdiv(s_end, CHUNK)
    for i in range(0, c_end - c_start):
        c = c_end - 1 - i
        # the states before each step of the chunk, from its checkpoint (steps past the end
        # have delta 0: they decay by 1 and add nothing)
        h = tl.load(ckpt_tile + c * NSTATE * DIM, mask=mask_nd, other=0.0)
        H = tl.zeros((CHUNK, BLOCK_N, BLOCK_D), dtype=tl.float32)
        for j in tl.static_range(CHUNK):
            s = c * CHUNK + j
            ok = mask_d & (s < L)
            t = _step_index(s, L, REVERSE)
            H = tl.where(offs_j[:, None, None] == j, h[None, :, :], H)
            dt = tl.load(d_row + t * s_dl, mask=ok, other=0.0).to(tl.float32)
            u = tl.load(u_row + t * s_ul, mask=ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(ok, dt, 0.0)
            if VAR_B:
                Bv = tl.load(b_col + t * s_bl, mask=mask_n & (s < L), other=0.0).to(tl.float32)[:, None]
            else:
                Bv = B_fix
            h = tl.exp2(dt[None, :] * A2) * h + (dt * u)[None, :] * Bv
        for jj in tl.static_range(CHUNK):
            j = CHUNK - 1 - jj
            s = c * CHUNK + j
            ok = mask_d & (s < L)
            t = _step_index(s, L, REVERSE)
            h_before = tl.sum(tl.where(offs_j[:, None, None] == j, H, 0.0), axis=0)
            dr = tl.load(d_row + t * s_dl, mask=ok, other=0.0).to(tl.float32)
            u = tl.load(u_row + t * s_ul, mask=ok, other=0.0).to(tl.float32)
            dout = tl.load(g_row + t * s_gl, mask=ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dr = dr + bias
            dt = dr
            if SOFTPLUS:
                dt = _softplus(dr)
            dt = tl.where(ok, dt, 0.0)
            if VAR_B:
                Bv = tl.load(b_col + t * s_bl, mask=mask_n & (s < L), other=0.0).to(tl.float32)[:, None]
            else:
                Bv = B_fix
            if VAR_C:
                Cv = tl.load(c_col + t * s_cl, mask=mask_n & (s < L), other=0.0).to(tl.float32)[:, None]
            else:
                Cv = C_fix
            if HAS_Z:
                zz = tl.load(z_row + t * s_zl, mask=ok, other=0.0).to(tl.float32)
                y = tl.load(y_row + t * s_yl, mask=ok, other=0.0).to(tl.float32)
                sig = tl.sigmoid(zz)
                dy = dout * zz * sig
                dz = dout * y * sig * (1.0 + zz * (1.0 - sig))
                tl.store(dz_ptr + x_off + t * s_xl, dz.to(dz_ptr.dtype.element_ty), mask=ok)
            else:
                dy = dout
            a = tl.exp2(dt[None, :] * A2)
            dtu = dt * u
            h_after = a * h_before + dtu[None, :] * Bv
            g = q + dy[None, :] * Cv
            g_ah = g * a * h_before
            g_b = tl.sum(g * Bv, axis=0)
            ddelta = tl.sum(g_ah * A2, axis=0) * LN2 + u * g_b
            du = dt * g_b
            if HAS_D:
                du += Dv * dy
                dD_acc += dy * u
            if SOFTPLUS:
                ddelta = ddelta * tl.sigmoid(dr)
            ddelta = tl.where(ok, ddelta, 0.0)
            if HAS_BIAS:
                dbias_acc += ddelta
            dA_acc += g_ah * dt[None, :]
            tl.store(du_ptr + x_off + t * s_xl, du.to(du_ptr.dtype.element_ty), mask=ok)
            tl.store(ddelta_ptr + x_off + t * s_xl, ddelta.to(ddelta_ptr.dtype.element_ty), mask=ok)
            if VAR_B:
                tl.store(dB_ptr + part + t, tl.sum(g * dtu[None, :], axis=1), mask=mask_n & (s < L))
            else:
                dB_acc += g * dtu[None, :]
            if VAR_C:
                tl.store(dC_ptr + part + t, tl.sum(h_after * dy[None, :], axis=1), mask=mask_n & (s < L))
            else:
                dC_acc += h_after * dy[None, :]
            q = a * g

    row = seg * BATCH + pid_b  # this program's partial: (segment, batch row)
    row_nd = row * NSTATE * DIM + nd_offs
    tl.store(dA_ptr + row_nd, dA_acc, mask=mask_nd)
    if not VAR_B:
        tl.store(dB_ptr + row_nd, dB_acc, mask=mask_nd)
    if not VAR_C:
        tl.store(dC_ptr + row_nd, dC_acc, mask=mask_nd)
    if HAS_D:
        tl.store(dD_ptr + row * DIM + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + row * DIM + offs_d, dbias_acc, mask=mask_d)


def _strides(t: Optional[torch.Tensor]) -> Tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise a ValueError naming the argument whose shape does not fit ``u`` (B, D, L)."""
    if u.dim() != 3:
        raise ValueError(f"selective scan: u must be (B, D, L), got {tuple(u.shape)}")
    b, d, length = u.shape
    if delta.shape != u.shape or (z is not None and z.shape != u.shape):
        raise ValueError(f"selective scan: delta {tuple(delta.shape)} and z "
                         f"{None if z is None else tuple(z.shape)} must have u's shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective scan: A must be (D, N) = ({d}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        if tuple(m.shape) not in ((b, n, length), (d, n)):
            raise ValueError(f"selective scan: {name} must be (B, N, L) = {(b, n, length)} or (D, N) = {(d, n)}, "
                             f"got {tuple(m.shape)}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (d,):
            raise ValueError(f"selective scan: {name} must be ({d},), got {tuple(v.shape)}")


def _flags(D, z, delta_bias, B, C, softplus: bool, reverse: bool, n: int) -> dict:
    return dict(BLOCK_N=triton.next_power_of_2(n), CHUNK=CHUNK, HAS_D=D is not None, HAS_Z=z is not None,
                HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, REVERSE=reverse,
                VAR_B=B.dim() == 3, VAR_C=C.dim() == 3)


def _or(t: Optional[torch.Tensor], dummy: torch.Tensor) -> torch.Tensor:
    return dummy if t is None else t


def _bc_strides(m: torch.Tensor) -> Tuple[int, int, int]:
    """(B, N, L) strides of a time-varying B / C; (d, n, 0) strides of a time-invariant (D, N) one."""
    return tuple(m.stride()) if m.dim() == 3 else (m.stride(0), m.stride(1), 0)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, reverse: bool,
                 save_for_backward: bool, return_last_state: bool):
    """Launch the forward kernel.

    Returns (out (B, D, L) in u's dtype and layout; with ``save_for_backward`` the checkpoints
    (B, ceil(L / CHUNK), N, D) fp32 and, when z is given, the output before the gate, else None;
    the last state (B, D, N) fp32 or None).
    """
    b, d, length = u.shape
    n = A.shape[1]
    A = A.float()
    n_chunks = triton.cdiv(length, CHUNK)
    out = empty_like_layout(u)
    y = empty_like_layout(u) if save_for_backward and z is not None else None
    ckpt = torch.empty(b, n_chunks, n, d, device=u.device, dtype=torch.float32) if save_for_backward else None
    last = torch.empty(b, n, d, device=u.device, dtype=torch.float32) if return_last_state else None
    seg, n_seg = segments(b, d, length, _sm_count(u.device))
    ends = torch.empty(b, n_seg, n, d, device=u.device, dtype=torch.float32) if seg else A
    dsum = torch.empty(b, n_seg, d, device=u.device, dtype=torch.float32) if seg else A
    args = (u, delta, A, B, C, _or(D, A), _or(z, u), _or(delta_bias, A), out, _or(y, out), _or(ckpt, A),
            _or(last, A), ends, dsum, length, d, n, n_chunks, *A.stride(),
            *u.stride(), *delta.stride(), *_bc_strides(B), *_bc_strides(C), *_strides(z), *out.stride())
    flags = dict(BLOCK_D=FWD_BLOCK_D, num_warps=FWD_WARPS, **_flags(D, z, delta_bias, B, C, softplus, reverse, n))
    grid = (b, triton.cdiv(d, FWD_BLOCK_D), n_seg)
    if seg:  # each segment's end state from zero, then every segment from its true start state
        _scan_fwd_kernel[grid](*args, STORE_CKPT=False, STORE_LAST=False, SEG=seg, MODE=1, **flags)
    _scan_fwd_kernel[grid](*args, STORE_CKPT=save_for_backward, STORE_LAST=return_last_state, SEG=seg,
                           MODE=2 if seg else 0, **flags)
    return out, ckpt, y, (last.transpose(1, 2).contiguous() if last is not None else None)


def scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dlast, softplus: bool, reverse: bool):
    """Launch the backward kernel and sum its partial results.

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in the dtypes of their inputs (None
    where the input was None); du, ddelta and dz share one layout (time-major when u is).
    """
    b, d, length = u.shape
    n = A.shape[1]
    var_b, var_c = B.dim() == 3, C.dim() == 3
    A32 = A.float()
    n_chunks = triton.cdiv(length, CHUNK)
    n_dblocks = triton.cdiv(d, BWD_BLOCK_D)
    dev, f32 = u.device, torch.float32
    du = empty_like_layout(u)
    ddelta = torch.empty_strided(du.shape, du.stride(), device=dev, dtype=delta.dtype)
    dz = torch.empty_strided(du.shape, du.stride(), device=dev, dtype=z.dtype) if z is not None else None
    seg, n_seg = segments(b, d, length, _sm_count(dev))
    rows = n_seg * b  # per (segment, batch row) partials
    dA = torch.empty(rows, n, d, device=dev, dtype=f32)
    # partials summed over their leading dimension afterwards (an outer-dimension reduction, which
    # is one streaming pass; a middle one was ~2 ms of reduction kernels per MAP-Base step)
    dB = torch.empty((n_dblocks, b, n, length) if var_b else (rows, n, d), device=dev, dtype=f32)
    dC = torch.empty((n_dblocks, b, n, length) if var_c else (rows, n, d), device=dev, dtype=f32)
    dD = torch.empty(rows, d, device=dev, dtype=f32) if D is not None else None
    dbias = torch.empty(rows, d, device=dev, dtype=f32) if delta_bias is not None else None
    dlast_k = dlast.transpose(1, 2).contiguous() if dlast is not None else None
    flags = _flags(D, z, delta_bias, B, C, softplus, reverse, n)
    starts = dsum = A32
    if seg:  # the adjoint each segment hands the one before, from zero
        starts = torch.empty(b, n_seg, n, d, device=dev, dtype=f32)
        dsum = torch.empty(b, n_seg, d, device=dev, dtype=f32)
        _scan_adjoint_kernel[(b, n_dblocks, n_seg)](
            delta, A32, C, _or(z, u), _or(delta_bias, A32), dout, starts, dsum,
            length, d, n, *A32.stride(), *delta.stride(), *_bc_strides(C), *_strides(z), *dout.stride(),
            BLOCK_D=BWD_BLOCK_D, BLOCK_N=flags["BLOCK_N"], SEG=seg, HAS_Z=flags["HAS_Z"],
            HAS_BIAS=flags["HAS_BIAS"], SOFTPLUS=softplus, REVERSE=reverse, VAR_C=var_c, num_warps=BWD_WARPS,
        )
    _scan_bwd_kernel[(b, n_dblocks, n_seg)](
        u, delta, A32, B, C, _or(D, A32), _or(z, u), _or(delta_bias, A32), dout, _or(y, u), ckpt, _or(dlast_k, A32),
        du, ddelta, _or(dz, du), dA, dB, dC, _or(dD, dA), _or(dbias, dA), starts, dsum,
        length, d, n, n_chunks, b, *A32.stride(),
        *u.stride(), *delta.stride(), *_bc_strides(B), *_bc_strides(C),
        *_strides(z), *dout.stride(), *_strides(y), *du.stride(),
        BLOCK_D=BWD_BLOCK_D, HAS_DLAST=dlast is not None, num_warps=BWD_WARPS, SEG=seg, **flags,
    )
    # every result contiguous except du / ddelta / dz (u's layout): the fake kernels say so too
    return (du, ddelta, dA.sum(0).t().contiguous().to(A.dtype),
            (dB.sum(0) if var_b else dB.sum(0).t().contiguous()).to(B.dtype),
            (dC.sum(0) if var_c else dC.sum(0).t().contiguous()).to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None, dz,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None)


# ----------------------------------------------------------------------------- autograd + custom op
# torch.compile sees the scan as one opaque op (no graph break): a forward op that also returns what
# the backward needs and a backward op, tied together with register_autograd. Custom ops cannot
# return None, so absent results travel as empty tensors.
_NONE = (0,)


def _none_to_empty(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(_NONE) if t is None else t


def _empty_to_none(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None or (t.dim() == 1 and t.numel() == 0) else t


@torch.library.custom_op("map_core::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                 softplus: bool, reverse: bool, save_for_backward: bool,
                 return_last_state: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out, ckpt, y, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, reverse,
                                      save_for_backward, return_last_state)
    f32 = A.float()
    return out, _none_to_empty(ckpt, f32), _none_to_empty(y, u), _none_to_empty(last, f32)


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save_for_backward, return_last_state):
    b, d, length = u.shape
    n = A.shape[1]
    f32 = torch.float32
    ckpt = u.new_empty((b, triton.cdiv(length, CHUNK), n, d) if save_for_backward else _NONE, dtype=f32)
    y = empty_like_layout(u) if save_for_backward and z is not None else u.new_empty(_NONE)
    last = u.new_empty((b, d, n) if return_last_state else _NONE, dtype=f32)
    return empty_like_layout(u), ckpt, y, last


@torch.library.custom_op("map_core::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 delta_bias: Optional[torch.Tensor], ckpt: torch.Tensor, y: Optional[torch.Tensor],
                 dlast: Optional[torch.Tensor], softplus: bool,
                 reverse: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                         torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dlast, softplus, reverse)
    return tuple(_none_to_empty(g, A) for g in grads)


@_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dlast, softplus, reverse):
    du = empty_like_layout(u)

    def like_du(dtype):
        return torch.empty_strided(du.shape, du.stride(), device=du.device, dtype=dtype)

    def opt(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else A.new_empty(_NONE)

    contiguous = torch.contiguous_format
    return (du, like_du(delta.dtype), torch.empty_like(A, memory_format=contiguous),
            torch.empty_like(B, memory_format=contiguous),
            torch.empty_like(C, memory_format=contiguous), opt(D),
            like_du(z.dtype) if z is not None else A.new_empty(_NONE), opt(delta_bias))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, reverse, _, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1], _empty_to_none(output[2]))
    ctx.softplus, ctx.reverse = softplus, reverse


def _backward(ctx, dout, dckpt, dy_saved, dlast):
    u, delta, A, B, C, D, z, delta_bias, ckpt, y = ctx.saved_tensors
    grads = _scan_bwd_op(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, y, _empty_to_none(dlast),
                         ctx.softplus, ctx.reverse)
    return tuple(_empty_to_none(g) for g in grads) + (None,) * 4


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _ScanFunction(torch.autograd.Function):
    """The eager path: the same kernels without the custom op's dispatch layers, which cost tens of
    microseconds a call (BENCHMARKS.md); ``torch.compile`` traces the custom op instead."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save, return_last):
        out, ckpt, y, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save, return_last)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, y)
        ctx.softplus, ctx.reverse = softplus, reverse
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt, y = ctx.saved_tensors
        grads = scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dlast, ctx.softplus, ctx.reverse)
        return grads + (None,) * 4


# Eager calls go through _ScanFunction (False: through the custom op, as under torch.compile).
EAGER_FUNCTION = True


def selective_scan_triton(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False, return_last_state: bool = False, reverse: bool = False,
):
    """The ``"triton"`` backend of :func:`map_core.ssm.selective_scan` (same arguments and results)."""
    check_shapes(u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, needs_grad, return_last_state)
    if EAGER_FUNCTION and not torch.compiler.is_compiling():
        out, last = _ScanFunction.apply(*args)
    else:
        out, _, _, last = _scan_fwd_op(*args)
    return (out, last) if return_last_state else out
