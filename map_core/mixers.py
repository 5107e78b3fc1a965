"""The Mamba-1 token mixer, one-way or bidirectional, with the official parameter names.

``bidirectional`` chooses how the second direction is made (both share ``in_proj``/``out_proj``):

- ``None``: one causal scan over the sequence.
- ``"sequence"`` (MAP 2D / Vision Mamba "v2"): a second scan with ``conv1d_b, x_proj_b, dt_proj_b,
  A_b_log, D_b`` runs on ``xz`` reversed along the sequence; its output is reversed back and the
  two are summed, then halved when ``divide_out`` (the MAP 2D models halve).
- ``"channel"`` (Mamba3D ``bimamba_type: v4``): the second scan runs on ``xz`` reversed along the
  channel axis (so its "x" is the reversed z half and its gate the reversed x half); its output is
  reversed along channels and added, with no halving.

Neither direction copies activations: the sequence direction asks the conv and the scan to run
from the last step to the first (``reverse=True``); the channel direction is computed as the
plain scan of (x = z, gate = x) with every per-channel parameter of the second direction flipped
(conv taps and bias, ``x_proj`` columns, ``dt_proj`` rows and bias, ``A``, ``D``), which is the
same function (only the small parameter tensors are reversed). Activations stay time-major
((B, L, C) memory, seen as (B, C, L)) from ``in_proj`` to ``out_proj``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ssm import causal_conv1d, selective_scan


class MambaMixer(nn.Module):
    """Mamba-1 token mixer: one causal scan, or two with ``bidirectional``. (B, L, d_model) -> same."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bidirectional: Optional[str] = None,
        divide_out: Optional[bool] = None,
        bias: bool = False,
        conv_bias: bool = True,
    ):
        super().__init__()
        if bidirectional not in (None, "sequence", "channel"):
            raise ValueError(
                f"bidirectional must be None, 'sequence' or 'channel', got {bidirectional!r}"
            )
        self.d_model, self.d_state, self.expand = d_model, d_state, expand
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.bidirectional = bidirectional
        self.divide_out = (bidirectional == "sequence") if divide_out is None else divide_out

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        dt_args = (dt_min, dt_max, dt_init_floor)
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = self._direction(
            d_conv, conv_bias, *dt_args
        )
        if bidirectional is not None:
            self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = self._direction(
                d_conv, conv_bias, *dt_args
            )

    def _direction(self, d_conv, conv_bias, dt_min, dt_max, dt_init_floor):
        """Parameters of one scan direction, with the official Mamba initialisation."""
        d_inner, n = self.d_inner, self.d_state
        conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)
        dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():  # inverse of softplus, so softplus(bias) == dt
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True
        A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        D = nn.Parameter(torch.ones(d_inner))
        return conv, x_proj, dt_proj, A_log, D

    def _direction_params(self, second: bool, flip: bool = False) -> tuple:
        """(conv weight, conv bias, x_proj weight, dt_proj weight, dt_proj bias, A_log, D) of one
        direction; ``flip`` reverses them along the inner channels (the channel direction)."""
        if second:
            mods = (self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        else:
            mods = (self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        conv, x_proj, dt_proj, A_log, D = mods
        if not flip:
            return conv.weight, conv.bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D
        conv_b = conv.bias.flip(0) if conv.bias is not None else None
        return (conv.weight.flip(0), conv_b, x_proj.weight.flip(1), dt_proj.weight.flip(0),
                dt_proj.bias.flip(0), A_log.flip(0), D.flip(0))

    def _scan(self, x: torch.Tensor, z: torch.Tensor, params: tuple, reverse: bool = False) -> torch.Tensor:
        """One direction. x, z: (B, d_inner, L) -> y: (B, d_inner, L), gated by z."""
        conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D = params
        x = causal_conv1d(x, conv_w, conv_b, reverse=reverse)
        x_dbl = F.linear(x.transpose(1, 2), x_proj_w)  # (B, L, dt_rank + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ dt_w.t()).transpose(1, 2)  # bias is added inside the scan
        return selective_scan(
            x, dt, -torch.exp(A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
            D.float(), z, dt_b.float(), delta_softplus=True, reverse=reverse,
        )

    def forward(self, hidden: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """hidden: (B, L, d_model) -> (B, L, d_model).

        ``causal=True`` makes the output at position t depend on positions <= t only: the
        ``"sequence"`` direction's backward scan is switched off (its term is zero; the halving
        stays). The other modes scan forward along the sequence already and ignore the flag.
        """
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each, time-major
        y = self._scan(x, z, self._direction_params(second=False))
        if self.bidirectional == "sequence" and not causal:
            y = y + self._scan(x, z, self._direction_params(second=True), reverse=True)
        elif self.bidirectional == "channel":
            y = y + self._scan(z, x, self._direction_params(second=True, flip=True))
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, bidirectional={self.bidirectional}"
