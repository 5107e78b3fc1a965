"""Shared test set-up: without a GPU, Triton kernels run in Triton's CPU interpreter.

The variable must be set before any kernel module is imported (Triton reads it when a kernel is
defined); kernel modules load lazily, on the first call that chooses them.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
