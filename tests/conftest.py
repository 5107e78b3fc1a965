"""Shared test set-up and helpers.

Scripts the tests start as processes (``tools/*.py``, ``datasets/check_data.py``, ``torchrun``)
import the packages of this checkout: its root is put first on their ``PYTHONPATH``.

Without a GPU, Triton kernels run in Triton's CPU interpreter. The variable must be set before any
kernel module is imported (Triton reads it when a kernel is defined); kernel modules load lazily,
on the first call that chooses them.
"""
import os
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def n_params(model: nn.Module) -> int:
    """Number of parameters (every tensor of ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())
