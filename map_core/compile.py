"""Regional compilation: ``torch.compile`` each repeated block once instead of the whole model.

The encoders repeat a few block classes (24 Mamba layers and 8 Transformer blocks in MAP-Base), so
compiling per block compiles each distinct graph once (parameters are graph inputs) and takes
seconds instead of minutes. Sequence lengths are dynamic from the start, so MAP 2D's per-step mask
ratio (a different number of visible tokens each step) does not recompile. The Triton kernels are
custom ops, opaque to the compiler: no graph breaks inside a block. State-dict keys are unchanged.
Modules declare their repeated blocks with :func:`repeated_block`.
"""
from __future__ import annotations

import logging
from typing import Optional, Type

import torch.nn as nn

from map_core import backends

log = logging.getLogger(__name__)

_BLOCKS: list = []


def repeated_block(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Class decorator: instances are compiled one by one by :func:`compile_blocks`."""
    _BLOCKS.append(cls)
    return cls


def compile_blocks(model: nn.Module, mode: Optional[str] = None, backend: str = "inductor") -> int:
    """Compile, in place, every repeated block of ``model`` that is not inside another one.

    ``mode``: a ``torch.compile`` mode (None: default; "max-autotune-no-cudagraphs", ...). Blocks are
    compiled with ``fullgraph=True``: a graph break inside one is an error, not a silent slowdown.
    Returns the number of blocks compiled.
    """
    params = next(model.parameters(), None)
    if params is not None:
        backends.resolve_all(params.device)
    count = 0

    def visit(module: nn.Module) -> None:
        nonlocal count
        for child in module.children():
            if isinstance(child, tuple(_BLOCKS)):
                child.compile(mode=mode, dynamic=True, fullgraph=True, backend=backend)
                count += 1
            else:
                visit(child)

    visit(model)
    log.info("torch.compile: %d repeated blocks (mode %s)", count, mode or "default")
    return count
