"""The selective scan as Triton kernels: a forward and a backward pass with the reference's semantics.

Same arguments and results as :func:`map_core.ssm.selective_scan_ref` (``mamba_ssm`` conventions)
plus ``reverse`` (scan from the last step to the first, as the reference on flipped inputs, with
no flipped copy). Inputs may be fp32, fp16 or bf16 with any strides: the mixers pass
time-major views ((B, L, D) memory seen as (B, D, L)), so every load of one step is contiguous
over channels. The state and all arithmetic are fp32.

Forward: one program per (batch row, block of ``BLOCK_D`` channels) holds the (BLOCK_D, N) state
in registers and walks the sequence one step at a time, loading the next step's inputs while
computing the current one. Every ``CHUNK`` steps it writes the state (fp32) as a checkpoint.

Backward: the same grid walks the chunks from last to first. Per chunk it loads (BLOCK_D, CHUNK)
tiles, rebuilds the chunk's states from its checkpoint with an associative scan over time, runs the
adjoint recurrence ``g_t = exp(delta_{t+1} A) g_{t+1} + dy_t C_t`` with a reverse associative scan,
and forms every gradient from those two (BLOCK_D, N, CHUNK) tiles. ``a_t h_{t-1}`` is taken as
``h_t - delta_t B_t u_t``, so no shifted copy of the states is needed. dB and dC are reduced over
the channel block in registers and written as one partial per block (summed afterwards: no
atomics, deterministic); dA, dD and d(delta_bias) are accumulated over time in registers.

Floors (MAP-Base shapes: batch 64, d_inner 1536, N 16, length 196, bf16): the forward must read
u, delta, z, B, C and write y (~116 MB with the checkpoints); the backward must read those, dy and
the checkpoints and write du, ddelta, dz, dB, dC (~290 MB); ~0.09 ms at 4.8 TB/s (H200) for both.
Exponentials: 308 M per pass; this design computes exp(delta A) once in the forward and twice in
the backward (``a_t`` and the shifted ``a_{t+1}``), 924 M in all, ~0.25 ms of the special-function
units (16 per SM per clock). Measured numbers are in BENCHMARKS.md.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(math.log2(math.e))
# Forward: channels per program (the (BLOCK_D, N) state lives in registers) and warps.
FWD_BLOCK_D = 32
FWD_WARPS = 4
# Forward over (BLOCK_D, CHUNK) tiles with an associative scan instead of a step loop.
FWD_CHUNKED = False
# Backward: channels and steps per tile; the (BLOCK_D, N, CHUNK) tiles set the register budget.
BWD_BLOCK_D = 16
BWD_WARPS = 8
# Steps between saved states: the backward's tile length.
CHUNK = 16


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with its default threshold 20
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _linear_combine(a_left, b_left, a_right, b_right):
    # (a, b) is the map h -> a h + b; apply left, then right
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ckpt_ptr, last_ptr,
    L, DIM, NSTATE, N_CHUNKS,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr, STORE_CKPT: tl.constexpr,
    STORE_LAST: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < DIM
    mask_dn = mask_d[:, None] & (offs_n[None, :] < NSTATE)
    A2 = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if not VAR_B:
        B_fix = tl.load(B_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if not VAR_C:
        C_fix = tl.load(C_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    d_row = delta_ptr + pid_b * s_db + offs_d * s_dd
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    o_row = out_ptr + pid_b * s_ob + offs_d * s_od
    b_row = B_ptr + pid_b * s_bb + offs_n * s_bn
    c_row = C_ptr + pid_b * s_cb + offs_n * s_cn
    mask_n = offs_n < NSTATE
    ckpt_tile = ckpt_ptr + pid_b * N_CHUNKS * DIM * NSTATE + offs_d[:, None] * NSTATE + offs_n[None, :]

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    # inputs of step 0, then of step s + 1 while step s is computed
    t = L - 1 if REVERSE else 0
    u_nx = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0)
    d_nx = tl.load(d_row + t * s_dl, mask=mask_d, other=0.0)
    if HAS_Z:
        z_nx = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0)
    if VAR_B:
        b_nx = tl.load(b_row + t * s_bl, mask=mask_n, other=0.0)
    if VAR_C:
        c_nx = tl.load(c_row + t * s_cl, mask=mask_n, other=0.0)
    for s in range(0, L):
        t = L - 1 - s if REVERSE else s
        u = u_nx.to(tl.float32)
        dr = d_nx.to(tl.float32)
        if HAS_Z:
            zz = z_nx.to(tl.float32)
        if VAR_B:
            Bt = b_nx.to(tl.float32)
        if VAR_C:
            Ct = c_nx.to(tl.float32)
        has_next = s + 1 < L
        t_nx = t - 1 if REVERSE else t + 1
        u_nx = tl.load(u_row + t_nx * s_ul, mask=mask_d & has_next, other=0.0)
        d_nx = tl.load(d_row + t_nx * s_dl, mask=mask_d & has_next, other=0.0)
        if HAS_Z:
            z_nx = tl.load(z_row + t_nx * s_zl, mask=mask_d & has_next, other=0.0)
        if VAR_B:
            b_nx = tl.load(b_row + t_nx * s_bl, mask=mask_n & has_next, other=0.0)
        if VAR_C:
            c_nx = tl.load(c_row + t_nx * s_cl, mask=mask_n & has_next, other=0.0)

        if STORE_CKPT:
            if s % CHUNK == 0:
                tl.store(ckpt_tile + (s // CHUNK) * DIM * NSTATE, h, mask=mask_dn)
        if HAS_BIAS:
            dr = dr + bias
        if SOFTPLUS:
            dr = _softplus(dr)
        dA = tl.exp2(dr[:, None] * A2)
        du = dr * u
        if VAR_B:
            h = dA * h + du[:, None] * Bt[None, :]
        else:
            h = dA * h + du[:, None] * B_fix
        if VAR_C:
            y = tl.sum(h * Ct[None, :], axis=1)
        else:
            y = tl.sum(h * C_fix, axis=1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            y = y * zz * tl.sigmoid(zz)
        tl.store(o_row + t * s_ol, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    if STORE_LAST:
        tl.store(last_ptr + pid_b * DIM * NSTATE + offs_d[:, None] * NSTATE + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _scan_fwd_chunked_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ckpt_ptr, last_ptr,
    L, DIM, NSTATE, N_CHUNKS,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr, STORE_CKPT: tl.constexpr,
    STORE_LAST: tl.constexpr,
):
    """The forward over (BLOCK_D, CHUNK) tiles: an associative scan per chunk instead of a step loop."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, CHUNK)
    mask_d = offs_d < DIM
    mask_n = offs_n < NSTATE
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn_offs = offs_d[:, None] * NSTATE + offs_n[None, :]
    A2 = tl.load(A_ptr + dn_offs, mask=mask_dn, other=0.0) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if not VAR_B:
        Bv = tl.load(B_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)[:, :, None]
    if not VAR_C:
        Cv = tl.load(C_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)[:, :, None]
    ckpt_tile = ckpt_ptr + pid_b * N_CHUNKS * DIM * NSTATE + dn_offs
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(0, N_CHUNKS):
        if STORE_CKPT:
            tl.store(ckpt_tile + c * DIM * NSTATE, h, mask=mask_dn)
        s = c * CHUNK + offs_j
        valid = s < L
        t = L - 1 - s if REVERSE else s
        m2 = mask_d[:, None] & valid[None, :]
        u = tl.load(u_ptr + pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
        dr = tl.load(delta_ptr + pid_b * s_db + offs_d[:, None] * s_dd + t[None, :] * s_dl, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dr += bias[:, None]
        if SOFTPLUS:
            dr = _softplus(dr)
        delta = tl.where(m2, dr, 0.0)
        if VAR_B:
            Bv = tl.load(B_ptr + pid_b * s_bb + offs_n[:, None] * s_bn + t[None, :] * s_bl,
                         mask=mask_n[:, None] & valid[None, :], other=0.0).to(tl.float32)[None, :, :]
        if VAR_C:
            Cv = tl.load(C_ptr + pid_b * s_cb + offs_n[:, None] * s_cn + t[None, :] * s_cl,
                         mask=mask_n[:, None] & valid[None, :], other=0.0).to(tl.float32)[None, :, :]
        a = tl.exp2(delta[:, None, :] * A2[:, :, None])
        a_cum, h_s = tl.associative_scan((a, (delta * u)[:, None, :] * Bv), 2, _linear_combine)
        hs = h_s + a_cum * h[:, :, None]
        y = tl.sum(hs * Cv, axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + pid_b * s_ob + offs_d[:, None] * s_od + t[None, :] * s_ol,
                 y.to(out_ptr.dtype.element_ty), mask=m2)
        # padded steps decay by 1 and add nothing, so the last column is the state after the chunk
        h = tl.sum(tl.where(offs_j[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)
    if STORE_LAST:
        tl.store(last_ptr + pid_b * DIM * NSTATE + dn_offs, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ckpt_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, DIM, NSTATE, N_CHUNKS, N_DBLOCKS,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_zb, s_zd, s_zl,
    s_gb, s_gd, s_gl, s_xb, s_xd, s_xl,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_DLAST: tl.constexpr,
):
    """Gradients. dout: strides s_g*; du, ddelta, dz: one layout, strides s_x*;
    dA, dD, dbias: fp32 per batch row (B, D, N) / (B, D), summed by the caller; dB, dC: fp32
    (B, N_DBLOCKS, N, L) partials for time-varying B / C, else (B, D, N)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, CHUNK)
    mask_d = offs_d < DIM
    mask_n = offs_n < NSTATE
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn_offs = offs_d[:, None] * NSTATE + offs_n[None, :]
    A = tl.load(A_ptr + dn_offs, mask=mask_dn, other=0.0)
    A2 = A * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if not VAR_B:
        B_fix = tl.load(B_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
        dB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if not VAR_C:
        C_fix = tl.load(C_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
        dC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + pid_b * DIM * NSTATE + dn_offs, mask=mask_dn, other=0.0)
    else:
        carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ckpt_tile = ckpt_ptr + pid_b * N_CHUNKS * DIM * NSTATE + dn_offs
    dpart = (pid_b * N_DBLOCKS + pid_d) * NSTATE * L

    for i in range(0, N_CHUNKS):
        c = N_CHUNKS - 1 - i
        s = c * CHUNK + offs_j
        valid = s < L
        valid_nx = s + 1 < L
        t = L - 1 - s if REVERSE else s
        t_nx = t - 1 if REVERSE else t + 1
        m2 = mask_d[:, None] & valid[None, :]
        m2_nx = mask_d[:, None] & valid_nx[None, :]
        u = tl.load(u_ptr + pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
        d_in = delta_ptr + pid_b * s_db + offs_d[:, None] * s_dd
        dr = tl.load(d_in + t[None, :] * s_dl, mask=m2, other=0.0).to(tl.float32)
        dr_nx = tl.load(d_in + t_nx[None, :] * s_dl, mask=m2_nx, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + pid_b * s_gb + offs_d[:, None] * s_gd + t[None, :] * s_gl, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dr += bias[:, None]
            dr_nx += bias[:, None]
        if SOFTPLUS:
            delta = _softplus(dr)
            delta_nx = _softplus(dr_nx)
        else:
            delta = dr
            delta_nx = dr_nx
        # steps past the end decay by 1 and add nothing: the adjoint passes through them
        delta = tl.where(m2, delta, 0.0)
        delta_nx = tl.where(m2_nx, delta_nx, 0.0)
        if VAR_B:
            Bv = tl.load(B_ptr + pid_b * s_bb + offs_n[:, None] * s_bn + t[None, :] * s_bl,
                         mask=mask_n[:, None] & valid[None, :], other=0.0).to(tl.float32)[None, :, :]
        else:
            Bv = B_fix[:, :, None]
        if VAR_C:
            Cv = tl.load(C_ptr + pid_b * s_cb + offs_n[:, None] * s_cn + t[None, :] * s_cl,
                         mask=mask_n[:, None] & valid[None, :], other=0.0).to(tl.float32)[None, :, :]
        else:
            Cv = C_fix[:, :, None]
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m2, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zz)
            dy = dout * zz * sig
        else:
            dy = dout

        # states of the chunk from its checkpoint: h_j = Acum_j h0 + Hs_j
        du_t = delta * u
        a = tl.exp2(delta[:, None, :] * A2[:, :, None])
        bu = du_t[:, None, :] * Bv
        a_cum, h_s = tl.associative_scan((a, bu), 2, _linear_combine)
        h0 = tl.load(ckpt_tile + c * DIM * NSTATE, mask=mask_dn, other=0.0)
        h = h_s + a_cum * h0[:, :, None]
        if HAS_Z:
            y = tl.sum(h * Cv, axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            dz = dout * y * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + pid_b * s_xb + offs_d[:, None] * s_xd + t[None, :] * s_xl,
                     dz.to(dz_ptr.dtype.element_ty), mask=m2)

        # adjoint states g_j = a_{j+1} g_{j+1} + dy_j C_j, from the end of the chunk
        a_nx = tl.exp2(delta_nx[:, None, :] * A2[:, :, None])
        a_rev, g_s = tl.associative_scan((a_nx, dy[:, None, :] * Cv), 2, _linear_combine, reverse=True)
        g = g_s + a_rev * carry[:, :, None]
        carry = tl.sum(tl.where(offs_j[None, None, :] == 0, g, 0.0), axis=2)

        g_ah = g * (h - bu)  # g_t * a_t * h_{t-1}
        dA_acc += tl.sum(g_ah * delta[:, None, :], axis=2)
        g_b = tl.sum(g * Bv, axis=1)
        ddelta = tl.sum(g_ah * A[:, :, None], axis=1) + u * g_b
        du = delta * g_b
        if HAS_D:
            du += Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddelta = ddelta * tl.sigmoid(dr)
        ddelta = tl.where(m2, ddelta, 0.0)
        dbias_acc += tl.sum(ddelta, axis=1)
        x_tile = pid_b * s_xb + offs_d[:, None] * s_xd + t[None, :] * s_xl
        tl.store(du_ptr + x_tile, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + x_tile,
                 ddelta.to(ddelta_ptr.dtype.element_ty), mask=m2)
        if VAR_B:
            dB = tl.sum(g * du_t[:, None, :], axis=0)  # (N, CHUNK)
            tl.store(dB_ptr + dpart + offs_n[:, None] * L + t[None, :], dB, mask=mask_n[:, None] & valid[None, :])
        else:
            dB_acc += tl.sum(g * du_t[:, None, :], axis=2)
        if VAR_C:
            dC = tl.sum(h * dy[:, None, :], axis=0)
            tl.store(dC_ptr + dpart + offs_n[:, None] * L + t[None, :], dC, mask=mask_n[:, None] & valid[None, :])
        else:
            dC_acc += tl.sum(h * dy[:, None, :], axis=2)

    row_dn = pid_b * DIM * NSTATE + dn_offs
    tl.store(dA_ptr + row_dn, dA_acc, mask=mask_dn)
    if not VAR_B:
        tl.store(dB_ptr + row_dn, dB_acc, mask=mask_dn)
    if not VAR_C:
        tl.store(dC_ptr + row_dn, dC_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * DIM + offs_d, dbias_acc, mask=mask_d)


def _strides(t: Optional[torch.Tensor]) -> Tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def _empty_like_layout(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An empty (B, D, L) tensor, time-major ((B, L, D) memory) when ``x`` is, else contiguous."""
    dtype = x.dtype if dtype is None else dtype
    b, d, length = x.shape
    stride = (length * d, 1, d) if x.stride(1) == 1 and d > 1 else (d * length, length, 1)
    return torch.empty_strided(x.shape, stride, device=x.device, dtype=dtype)


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


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, reverse: bool,
                 save_checkpoints: bool, return_last_state: bool):
    """Launch the forward kernel.

    Returns (out (B, D, L) in u's dtype and layout, checkpoints (B, ceil(L / CHUNK), D, N) fp32
    or None, last state (B, D, N) fp32 or None).
    """
    b, d, length = u.shape
    n = A.shape[1]
    A = A.float().contiguous()
    B = B if B.dim() == 3 else B.contiguous()
    C = C if C.dim() == 3 else C.contiguous()
    n_chunks = triton.cdiv(length, CHUNK)
    out = _empty_like_layout(u)
    ckpt = torch.empty(b, n_chunks, d, n, device=u.device, dtype=torch.float32) if save_checkpoints else None
    last = torch.empty(b, d, n, device=u.device, dtype=torch.float32) if return_last_state else None
    kernel = _scan_fwd_chunked_kernel if FWD_CHUNKED else _scan_fwd_kernel
    kernel[(b, triton.cdiv(d, FWD_BLOCK_D))](
        u, delta, A, B, C, _or(D, A), _or(z, u), _or(delta_bias, A), out, _or(ckpt, A), _or(last, A),
        length, d, n, n_chunks,
        *u.stride(), *delta.stride(), *_strides(B if B.dim() == 3 else None),
        *_strides(C if C.dim() == 3 else None), *_strides(z), *out.stride(),
        BLOCK_D=FWD_BLOCK_D, STORE_CKPT=save_checkpoints, STORE_LAST=return_last_state,
        num_warps=FWD_WARPS, **_flags(D, z, delta_bias, B, C, softplus, reverse, n),
    )
    return out, ckpt, last


def scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, dlast, softplus: bool, reverse: bool):
    """Launch the backward kernel and sum its partial results.

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in the dtypes of their inputs (None
    where the input was None); du, ddelta and dz share one layout (time-major when u is).
    """
    b, d, length = u.shape
    n = A.shape[1]
    var_b, var_c = B.dim() == 3, C.dim() == 3
    A32 = A.float().contiguous()
    Bk = B if var_b else B.contiguous()
    Ck = C if var_c else C.contiguous()
    n_chunks = triton.cdiv(length, CHUNK)
    n_dblocks = triton.cdiv(d, BWD_BLOCK_D)
    dev, f32 = u.device, torch.float32
    du = _empty_like_layout(u)
    ddelta = torch.empty_strided(du.shape, du.stride(), device=dev, dtype=delta.dtype)
    dz = torch.empty_strided(du.shape, du.stride(), device=dev, dtype=z.dtype) if z is not None else None
    dA = torch.empty(b, d, n, device=dev, dtype=f32)
    dB = torch.empty((b, n_dblocks, n, length) if var_b else (b, d, n), device=dev, dtype=f32)
    dC = torch.empty((b, n_dblocks, n, length) if var_c else (b, d, n), device=dev, dtype=f32)
    dD = torch.empty(b, d, device=dev, dtype=f32) if D is not None else None
    dbias = torch.empty(b, d, device=dev, dtype=f32) if delta_bias is not None else None
    _scan_bwd_kernel[(b, n_dblocks)](
        u, delta, A32, Bk, Ck, _or(D, dA), _or(z, u), _or(delta_bias, dA), dout, ckpt, _or(dlast, dA),
        du, ddelta, _or(dz, du), dA, dB, dC, _or(dD, dA), _or(dbias, dA),
        length, d, n, n_chunks, n_dblocks,
        *u.stride(), *delta.stride(), *_strides(Bk if var_b else None), *_strides(Ck if var_c else None),
        *_strides(z), *dout.stride(), *du.stride(),
        BLOCK_D=BWD_BLOCK_D, HAS_DLAST=dlast is not None, num_warps=BWD_WARPS,
        **_flags(D, z, delta_bias, B, C, softplus, reverse, n),
    )
    return (du, ddelta, dA.sum(0).to(A.dtype), (dB.sum(1) if var_b else dB.sum(0)).to(B.dtype),
            (dC.sum(1) if var_c else dC.sum(0)).to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None, dz,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None)


# ----------------------------------------------------------------------------- autograd + custom op
# torch.compile sees the scan as one opaque op (no graph break): a forward op that also returns the
# checkpoints and a backward op, tied together with register_autograd. Custom ops cannot return
# None, so absent results travel as empty tensors.
_NONE = (0,)


def _none_to_empty(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(_NONE) if t is None else t


def _empty_to_none(t: torch.Tensor) -> Optional[torch.Tensor]:
    return None if t.dim() == 1 and t.numel() == 0 else t


@torch.library.custom_op("map_core::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                 softplus: bool, reverse: bool, save_checkpoints: bool,
                 return_last_state: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, ckpt, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, reverse,
                                   save_checkpoints, return_last_state)
    return out, _none_to_empty(ckpt, A.float()), _none_to_empty(last, A.float())


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save_checkpoints, return_last_state):
    b, d, length = u.shape
    n = A.shape[1]
    ckpt = u.new_empty((b, triton.cdiv(length, CHUNK), d, n) if save_checkpoints else _NONE, dtype=torch.float32)
    last = u.new_empty((b, d, n) if return_last_state else _NONE, dtype=torch.float32)
    return _empty_like_layout(u), ckpt, last


@torch.library.custom_op("map_core::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                 delta_bias: Optional[torch.Tensor], ckpt: torch.Tensor, dlast: Optional[torch.Tensor],
                 softplus: bool, reverse: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, dlast, softplus, reverse)
    return tuple(_none_to_empty(g, A) for g in grads)


@_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, dlast, softplus, reverse):
    du = _empty_like_layout(u)

    def like_du(dtype):
        return torch.empty_strided(du.shape, du.stride(), device=du.device, dtype=dtype)

    def opt(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else A.new_empty(_NONE)

    return (du, like_du(delta.dtype), torch.empty_like(A), torch.empty_like(B, memory_format=torch.contiguous_format),
            torch.empty_like(C, memory_format=torch.contiguous_format), opt(D),
            like_du(z.dtype) if z is not None else A.new_empty(_NONE), opt(delta_bias))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, reverse, _, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1])
    ctx.softplus, ctx.reverse = softplus, reverse


def _backward(ctx, dout, dckpt, dlast):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    if dlast is not None and dlast.numel() == 0:
        dlast = None
    grads = _scan_bwd_op(dout, u, delta, A, B, C, D, z, delta_bias, ckpt, dlast, ctx.softplus, ctx.reverse)
    return tuple(_empty_to_none(g) for g in grads) + (None,) * 4


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False, return_last_state: bool = False, reverse: bool = False,
):
    """The ``"triton"`` backend of :func:`map_core.ssm.selective_scan` (same arguments and results)."""
    check_shapes(u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    out, _, last = _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, needs_grad,
                                return_last_state)
    return (out, last) if return_last_state else out
