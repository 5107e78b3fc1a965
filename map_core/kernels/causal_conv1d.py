"""Depthwise causal conv1d + SiLU as Triton kernels (the ``"triton"`` backend of the ``conv`` op).

Same semantics as :func:`map_core.ssm.causal_conv1d_ref`: ``y[d, t] = silu(b[d] + sum_k w[d, k]
x[d, t - (K - 1 - k)])``, zero before the start; ``reverse=True`` is the anti-causal conv (the
causal conv of the flipped sequence, flipped back) without a flipped copy. x may have any strides;
the output is time-major ((B, L, D) memory) when x is, which is how the mixers call it.

Forward: one program per (batch row, BLOCK_L steps, BLOCK_D channels) reads K shifted tiles.
Backward: the same tiling; each program recomputes the pre-activation at the K positions its
output gradient depends on (K x K fused multiply-adds per element, far below the bytes), writes
dx, and writes its partial sums of dw and db (summed afterwards: deterministic, no atomics).
Floor at MAP-Base shapes (B 64, D 1536, L 196, bf16): forward reads x and writes y, 77 MB; the
backward reads x and dy and writes dx, 116 MB; 0.04 ms together at 4.8 TB/s.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from map_core.kernels import empty_like_layout

# Tile shapes (steps x channels, warps), the fastest of a sweep on an H200 at MAP-Base and PointMAP
# shapes (B 64 x D 1536 x L 98 / 196, B 128 x D 768 x L 129; .lab notes in BENCHMARKS.md): the
# forward wants wide channel tiles, the backward small ones (its per-tile partial sums of dw).
FWD_BLOCK_L, FWD_BLOCK_D, FWD_WARPS = 16, 128, 4
BWD_BLOCK_L, BWD_BLOCK_D, BWD_WARPS = 32, 32, 1


@triton.jit
def _tap(x_ptr, t, shift, L, mask_d, x_base, s_xl, REVERSE: tl.constexpr):
    """x at t - shift (t + shift when REVERSE) as fp32, zero outside [0, L)."""
    tt = t + shift if REVERSE else t - shift
    ok = (tt >= 0) & (tt < L)
    return tl.load(x_ptr + x_base + tt[None, :] * s_xl, mask=mask_d[:, None] & ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, L, DIM, s_xb, s_xd, s_xl, s_yb, s_yd, s_yl,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    x_base = pid_b * s_xb + offs_d[:, None] * s_xd
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(K):
        w = tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0).to(tl.float32)
        acc += w[:, None] * _tap(x_ptr, t, K - 1 - k, L, mask_d, x_base, s_xl, REVERSE)
    y = acc * tl.sigmoid(acc)
    mask = mask_d[:, None] & (t < L)[None, :]
    tl.store(y_ptr + pid_b * s_yb + offs_d[:, None] * s_yd + t[None, :] * s_yl, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, L, DIM, N_LBLOCKS,
                     s_xb, s_xd, s_xl, s_gb, s_gd, s_gl, s_ob, s_od, s_ol,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx (strides s_o*); dw, db: fp32 partials (B * N_LBLOCKS, D, K) and (B * N_LBLOCKS, D)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(1)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    x_base = pid_b * s_xb + offs_d[:, None] * s_xd
    g_base = pid_b * s_gb + offs_d[:, None] * s_gd
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dx = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    # output position t + j (t - j when REVERSE) reads x[t] through tap K - 1 - j
    for j in tl.static_range(K):
        tj = t - j if REVERSE else t + j
        ok = (tj >= 0) & (tj < L)
        pre = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32) + bias[:, None]
        for k in tl.static_range(K):
            w = tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0).to(tl.float32)
            pre += w[:, None] * _tap(x_ptr, tj, K - 1 - k, L, mask_d, x_base, s_xl, REVERSE)
        sig = tl.sigmoid(pre)
        dy = tl.load(dy_ptr + g_base + tj[None, :] * s_gl, mask=mask_d[:, None] & ok[None, :], other=0.0).to(tl.float32)
        g = dy * sig * (1.0 + pre * (1.0 - sig))
        w_j = tl.load(w_ptr + offs_d * K + (K - 1 - j), mask=mask_d, other=0.0).to(tl.float32)
        dx += w_j[:, None] * g
        if j == 0:
            g_own = g  # the gradient at this program's own positions, for dw and db
    mask = mask_d[:, None] & (t < L)[None, :]
    tl.store(dx_ptr + pid_b * s_ob + offs_d[:, None] * s_od + t[None, :] * s_ol, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    part = (pid_b * N_LBLOCKS + pid_l) * DIM
    for k in tl.static_range(K):
        dw = tl.sum(g_own * _tap(x_ptr, t, K - 1 - k, L, mask_d, x_base, s_xl, REVERSE), axis=1)
        tl.store(dw_ptr + (part + offs_d) * K + k, dw, mask=mask_d)
    if HAS_BIAS:
        tl.store(db_ptr + part + offs_d, tl.sum(g_own, axis=1), mask=mask_d)


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    b, d, length = x.shape
    y = empty_like_layout(x)
    grid = (b, triton.cdiv(length, FWD_BLOCK_L), triton.cdiv(d, FWD_BLOCK_D))
    _conv_fwd_kernel[grid](x, weight, bias if bias is not None else weight, y, length, d, *x.stride(), *y.stride(),
                           K=weight.shape[1], HAS_BIAS=bias is not None, REVERSE=reverse,
                           BLOCK_L=FWD_BLOCK_L, BLOCK_D=FWD_BLOCK_D, num_warps=FWD_WARPS)
    return y


def conv_backward(dy, x, weight, bias, reverse: bool):
    b, d, length = x.shape
    n_lblocks = triton.cdiv(length, BWD_BLOCK_L)
    dx = empty_like_layout(x)
    dw = torch.empty(b * n_lblocks, d, weight.shape[1], device=x.device, dtype=torch.float32)
    db = torch.empty(b * n_lblocks, d, device=x.device, dtype=torch.float32) if bias is not None else dw
    _conv_bwd_kernel[(b, n_lblocks, triton.cdiv(d, BWD_BLOCK_D))](
        x, weight, bias if bias is not None else weight, dy, dx, dw, db, length, d, n_lblocks,
        *x.stride(), *dy.stride(), *dx.stride(), K=weight.shape[1], HAS_BIAS=bias is not None,
        REVERSE=reverse, BLOCK_L=BWD_BLOCK_L, BLOCK_D=BWD_BLOCK_D, num_warps=BWD_WARPS)
    return dx, dw.sum(0).to(weight.dtype), db.sum(0).to(bias.dtype) if bias is not None else None


@torch.library.custom_op("map_core::causal_conv1d_silu", mutates_args=())
def _conv_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    return conv_forward(x, weight, bias, reverse)


@_conv_op.register_fake
def _(x, weight, bias, reverse):
    return empty_like_layout(x)


@torch.library.custom_op("map_core::causal_conv1d_silu_bwd", mutates_args=())
def _conv_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db = conv_backward(dy, x, weight, bias, reverse)
    return dx, dw, db if db is not None else weight.new_empty((0,))


@_conv_bwd_op.register_fake
def _(dy, x, weight, bias, reverse):
    return empty_like_layout(x), torch.empty_like(weight), torch.empty_like(bias) if bias is not None else weight.new_empty((0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.reverse = reverse


def _backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _conv_bwd_op(dy, x, weight, bias, ctx.reverse)
    return dx, dw, db if bias is not None else None, None


_conv_op.register_autograd(_backward, setup_context=_setup_context)


class _ConvFunction(torch.autograd.Function):
    """The eager path without the custom op's dispatch layers (see ``selective_scan``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        ctx.save_for_backward(x, weight, bias)
        ctx.reverse = reverse
        return conv_forward(x, weight, bias, reverse)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = conv_backward(dy, x, weight, bias, ctx.reverse)
        return dx, dw, db, None


EAGER_FUNCTION = True


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         reverse: bool = False) -> torch.Tensor:
    """The ``"triton"`` backend of :func:`map_core.ssm.causal_conv1d`. weight: (D, K) or (D, 1, K)."""
    weight = weight.reshape(weight.shape[0], -1).contiguous()
    if EAGER_FUNCTION and not torch.compiler.is_compiling():
        return _ConvFunction.apply(x, weight, bias, reverse)
    return _conv_op(x, weight, bias, reverse)
