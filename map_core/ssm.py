"""The Mamba-1 selective scan, with a pure-PyTorch reference and optional fast paths.

The argument conventions are those of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = <C_t, h_t> + D * u_t,      out = y * silu(z)  (when z is given)

with ``delta = softplus(delta + delta_bias)`` when asked. Backends:

- ``"torch"``: the reference below, differentiable by autograd, any device, fp32 state
  (trained in checkpointed spans of ``CHECKPOINT_CHUNK`` steps when that is set).
- ``"mamba_ssm"``: the CUDA kernel of the ``mamba_ssm`` package (CUDA tensors only).
- ``"auto"``: ``mamba_ssm`` when installed and the inputs are on CUDA, else ``"torch"``.

Asking for a backend that is not installed is an error, never a silent fallback.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "mamba_ssm")
# When set, the "torch" backend trains in spans of this many steps and recomputes each span's
# states in the backward pass: identical results and a fraction of the memory; slower on a GPU,
# faster on a CPU (BENCHMARKS.md). None keeps every step's state (plain autograd).
CHECKPOINT_CHUNK: Optional[int] = None


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


@functools.lru_cache(maxsize=None)
def is_available(backend: str) -> bool:
    """Whether the package behind ``backend`` can be imported (no import is done)."""
    if backend == "torch":
        return True
    if backend == "mamba_ssm":
        return importlib.util.find_spec("mamba_ssm") is not None
    return False


@functools.lru_cache(maxsize=None)
def _log_choice(backend: str) -> None:
    log.info("selective scan backend: %s", backend)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into a concrete, usable backend name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend '{backend}'; expected one of {BACKENDS}")
    if backend == "auto":
        backend = "mamba_ssm" if device.type == "cuda" and is_available("mamba_ssm") else "torch"
    elif not is_available(backend):
        raise RuntimeError(
            f"selective-scan backend '{backend}' was requested but the package is not installed "
            f"(pip install mamba-ssm), or use backend 'torch' / 'auto'"
        )
    elif backend == "mamba_ssm" and device.type != "cuda":
        raise RuntimeError("selective-scan backend 'mamba_ssm' needs CUDA tensors")
    _log_choice(backend)
    return backend


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
    backend: str = "auto",
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan with ``mamba_ssm``'s conventions (see module docstring), on ``backend``."""
    backend = resolve_backend(backend, u.device)
    if backend == "mamba_ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                              checkpoint_chunk=CHECKPOINT_CHUNK)


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str = "auto"
) -> torch.Tensor:
    """Depthwise causal conv + SiLU. x: (B, D, L); weight: (D, 1, K) or (D, K); bias: (D,).

    Uses ``causal_conv1d`` when installed and x is on CUDA (``backend="auto"``), otherwise
    ``F.conv1d`` with left padding K-1 (the official layer pads both sides and trims the end,
    which is the same).
    """
    w = weight.reshape(weight.shape[0], -1)
    use_fast = (
        backend == "auto" and x.device.type == "cuda"
        and importlib.util.find_spec("causal_conv1d") is not None
    )
    if use_fast:
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn(x, w, bias, activation="silu")
    k = w.shape[1]
    y = F.conv1d(F.pad(x, (k - 1, 0)), w.unsqueeze(1), bias, groups=w.shape[0])
    return F.silu(y)
