"""The project's Triton kernels, one op per module (``selective_scan``, ``causal_conv1d``); each
registers itself as a backend of its op in :mod:`map_core.ssm`. Imported only when chosen."""
from __future__ import annotations

from typing import Optional

import torch


def empty_like_layout(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An empty (B, D, L) tensor, time-major ((B, L, D) memory) when ``x`` is, else contiguous: the
    layout every kernel writes its (B, D, L) outputs in, and the one its fake kernel declares."""
    b, d, length = x.shape
    stride = (length * d, 1, d) if x.stride(1) == 1 and d > 1 else (d * length, length, 1)
    return torch.empty_strided(x.shape, stride, device=x.device, dtype=x.dtype if dtype is None else dtype)
