"""Independent re-implementations of the official MAP / Mamba3D forward passes, for parity tests.

Nothing here imports `map_core`, `image` or `pointcloud`: these modules are the oracle the library is
compared against. They are deliberately slow and literal: a step-by-step selective scan, causal
convolution by padding and trimming, and module trees / parameter names equal to the official ones.

Shared pieces (both official releases use the same Mamba-1 inner function):
- `selective_scan_loop`: `mamba_ssm.ops.selective_scan_interface.selective_scan_fn` semantics.
- `mamba_inner_no_out_proj`: `mamba_inner_fn_no_out_proj` (conv + SiLU, x_proj, dt_proj, scan with
  z gating), the function both bidirectional mixers call once per direction.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["selective_scan_loop", "causal_conv1d_silu", "mamba_inner_no_out_proj"]


def selective_scan_loop(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Selective scan, one time step at a time, with an fp32 state.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,).
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t;  y_t = <h_t, C_t> + D * u_t;
    out = y * silu(z). Returns (b, d, l) in u's dtype.
    """
    dtype_in = u.dtype
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    state = torch.zeros(batch, dim, A.shape[1], dtype=torch.float32, device=u.device)
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)  # (b, d, n)
        dBu = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]  # (b, d, n)
        state = dA * state + dBu
        ys.append((state * C[:, None, :, t]).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


def causal_conv1d_silu(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Depthwise causal conv + SiLU, as `causal_conv1d_fwd(x, w, b, None, True)`. x: (b, d, l)."""
    k = conv.weight.shape[-1]
    y = F.conv1d(x, conv.weight, conv.bias, padding=k - 1, groups=x.shape[1])
    return F.silu(y[..., : x.shape[-1]])


def mamba_inner_no_out_proj(
    xz: torch.Tensor,
    conv1d: nn.Conv1d,
    x_proj: nn.Linear,
    dt_proj: nn.Linear,
    A_log: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """One direction of a bidirectional Mamba-1 mixer, before out_proj.

    xz: (b, 2*d_inner, l) = [x; z]. Returns y * silu(z): (b, d_inner, l).
    """
    length = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_silu(x, conv1d)
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj.weight)  # (b*l, r + 2n)
    dt_rank = dt_proj.weight.shape[1]
    d_state = A_log.shape[1]
    dt, Bm, Cm = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    delta = (dt_proj.weight @ dt.t()).reshape(-1, x.shape[0], length).transpose(0, 1)  # (b, d, l)
    Bm = Bm.reshape(x.shape[0], length, d_state).transpose(1, 2)  # (b, n, l)
    Cm = Cm.reshape(x.shape[0], length, d_state).transpose(1, 2)
    A = -torch.exp(A_log.float())
    return selective_scan_loop(
        x, delta, A, Bm, Cm, D.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True
    )
