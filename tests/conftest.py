"""Shared test set-up and helpers.

Without a GPU, Triton kernels run in Triton's CPU interpreter. The variable must be set before any
kernel module is imported (Triton reads it when a kernel is defined); kernel modules load lazily,
on the first call that chooses them.
"""
import os

import torch
import torch.nn as nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def n_params(model: nn.Module) -> int:
    """Number of parameters (every tensor of ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())
