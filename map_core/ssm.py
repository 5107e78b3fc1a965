"""The Mamba-1 selective scan and the depthwise causal conv, with pure-PyTorch references.

The argument conventions are those of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = <C_t, h_t> + D * u_t,      out = y * silu(z)  (when z is given)

with ``delta = softplus(delta + delta_bias)`` when asked. ``reverse=True`` runs the recurrence from
the last step to the first (the same as flipping every (B, ., L) input and the output).

Implementations are chosen per op through :mod:`map_core.backends` (``runtime.backends.scan`` and
``.conv`` in configs, or ``backend=`` in a direct call):

- ``"torch"``: the references below, differentiable by autograd, any device, fp32 state. The
  oracle for every other backend.
- ``"triton"``: the project's fused kernels (:mod:`map_core.kernels`), the ``auto`` choice on CUDA.
- ``"mamba_ssm"`` / ``"causal_conv1d"``: the CUDA packages of those names, only when named.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from map_core import backends


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 stay as they are (fp64 keeps gradcheck exact)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _scan_span(
    h: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The recurrence over one span of T steps from state h: (B, D, N).

    u, delta: (B, D, T) (delta after bias and softplus); B, C: (B, N, T) or (D, N).
    Returns (y (B, D, T) without the D and z terms, the state after the span).
    """
    dA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (B, D, T, N)
    if B.dim() == 2:
        dBu = (delta * u).unsqueeze(-1) * B[:, None, :]
    else:
        dBu = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)
    # unbind once: indexing step by step would make autograd write a full-size gradient per step
    steps = zip(dA.unbind(2), dBu.unbind(2))
    c_steps = [C] * u.shape[2] if C.dim() == 2 else C.transpose(1, 2).unsqueeze(2).unbind(1)
    ys = []
    for (da, dbu), c in zip(steps, c_steps):  # c: (D, N) or (B, 1, N)
        h = da * h + dbu
        ys.append((h * c).sum(-1))
    return torch.stack(ys, dim=2), h


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    checkpoint_chunk: Optional[int] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Reference selective scan.

    u, delta: (B, D, L); A: (D, N); B, C: (B, N, L) (or (D, N) when time-invariant);
    D: (D,); z: (B, D, L); delta_bias: (D,). Returns out (B, D, L) in u's dtype
    [and the last state (B, D, N)]. The loop runs over L only; batch, channels and
    state are vectorised. Arithmetic is in fp32 (fp64 for fp64 inputs).

    ``checkpoint_chunk``: when gradients are on, run the sequence in spans of this many steps
    and recompute each span's states in the backward pass (``torch.utils.checkpoint``) instead
    of keeping every step's (B, D, N) state: the same numbers, far less memory, ~1.3x the time.
    """
    dtype_in = u.dtype
    u, delta, A, B, C = (_at_least_fp32(t) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + _at_least_fp32(delta_bias)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    length = u.shape[2]
    if checkpoint_chunk and torch.is_grad_enabled() and length > checkpoint_chunk:
        ys = []
        for start in range(0, length, checkpoint_chunk):
            span = slice(start, start + checkpoint_chunk)
            b_span = B if B.dim() == 2 else B[:, :, span]
            c_span = C if C.dim() == 2 else C[:, :, span]
            y_span, h = checkpoint(_scan_span, h, u[:, :, span], delta[:, :, span], A, b_span, c_span,
                                   use_reentrant=False)
            ys.append(y_span)
        y = torch.cat(ys, dim=2)
    else:
        y, h = _scan_span(h, u, delta, A, B, C)
    if D is not None:
        y = y + u * _at_least_fp32(D)[:, None]
    if z is not None:
        y = y * F.silu(_at_least_fp32(z))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def _flip_time(*tensors: Optional[torch.Tensor]):
    """Reverse every (B, ., L) tensor along L; (D, N) / (D,) tensors and None pass through."""
    return tuple([t.flip(-1) if t is not None and t.dim() == 3 else t for t in tensors])


def _scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False, reverse=False):
    if not reverse:
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    u, delta, B, C, z = _flip_time(u, delta, B, C, z)
    res = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return (res[0].flip(-1), res[1]) if return_last_state else res.flip(-1)


def _scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    return_last_state=False, reverse=False):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if reverse:
        u, delta, B, C, z = _flip_time(u, delta, B, C, z)
    res = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if not reverse:
        return res
    return (res[0].flip(-1), res[1]) if return_last_state else res.flip(-1)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
    backend: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan (see module docstring) on ``backend``, default the configured one.

    u, delta, z: (B, D, L) with any strides; A: (D, N); B, C: (B, N, L) or (D, N); D,
    delta_bias: (D,). Returns out (B, D, L) in u's dtype [and the last state (B, D, N), fp32].
    """
    fn = backends.get("scan", u.device, backend)
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse)


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      reverse: bool = False) -> torch.Tensor:
    """Reference depthwise causal conv + SiLU. x: (B, D, L); weight: (D, 1, K) or (D, K); bias: (D,).

    ``F.conv1d`` with left padding K-1 (the official layer pads both sides and trims the end, which
    is the same); ``reverse``: the anti-causal conv, i.e. the causal conv of the flipped sequence.
    """
    w = weight.reshape(weight.shape[0], -1)
    k = w.shape[1]
    if reverse:
        return causal_conv1d_ref(x.flip(-1), w, bias).flip(-1)
    y = F.conv1d(F.pad(x, (k - 1, 0)), w.unsqueeze(1), bias, groups=w.shape[0])
    return F.silu(y)


def _conv_causal_conv1d(x, weight, bias, reverse=False):
    from causal_conv1d import causal_conv1d_fn

    w = weight.reshape(weight.shape[0], -1)
    if reverse:
        return causal_conv1d_fn(x.flip(-1), w, bias, activation="silu").flip(-1)
    return causal_conv1d_fn(x, w, bias, activation="silu")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], reverse: bool = False,
                  backend: Optional[str] = None) -> torch.Tensor:
    """Depthwise causal conv + SiLU (see :func:`causal_conv1d_ref`) on ``backend``, default the
    configured one. x: (B, D, L) with any strides -> (B, D, L)."""
    return backends.get("conv", x.device, backend)(x, weight, bias, reverse)


# registration order is auto's preference: the Triton kernels on CUDA, else the references
backends.register("scan", "triton", "map_core.kernels.selective_scan:selective_scan_triton", package="triton",
                  auto=True, interpretable=True)
backends.register("scan", "torch", _scan_torch, devices=None)
backends.register("scan", "mamba_ssm", _scan_mamba_ssm, package="mamba_ssm")
backends.register("conv", "triton", "map_core.kernels.causal_conv1d:causal_conv1d_triton", package="triton",
                  auto=True, interpretable=True)
backends.register("conv", "torch", causal_conv1d_ref, devices=None)
backends.register("conv", "causal_conv1d", _conv_causal_conv1d, package="causal_conv1d")
