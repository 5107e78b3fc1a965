"""The modality-free core of MAP: selective scan and Mamba mixer, hybrid encoder, masking and
objectives, the reconstruction decoder, the pretraining module, backends, configs and the engine.

It needs torch >= 2.5 (``TORCH_FLOOR``, also the floor in setup.py) for the APIs in
``TORCH_APIS``; an older torch fails here, at import, with the list of what is missing, instead of
deep inside a model or a checkpoint load.
"""
from __future__ import annotations

from types import ModuleType
from typing import List

import torch

TORCH_FLOOR = "2.5"
TORCH_APIS = (
    "nn.RMSNorm",  # 2.4: the Mamba layers' norm
    "library.custom_op",  # 2.4: the Triton kernels as ops torch.compile sees through
    "serialization.safe_globals",  # 2.5: checkpoints read with weights_only=True
    "compiler.is_compiling",  # 2.3
)


def missing_torch_apis(module: ModuleType = torch) -> List[str]:
    """The entries of ``TORCH_APIS`` that ``module`` (torch) lacks."""
    missing = []
    for path in TORCH_APIS:
        owner = module
        for name in path.split("."):
            owner = getattr(owner, name, None)
        if owner is None:
            missing.append(f"torch.{path}")
    return missing


if missing_torch_apis():
    raise ImportError(f"map_core needs torch >= {TORCH_FLOOR}; torch {torch.__version__} lacks "
                      f"{', '.join(missing_torch_apis())} (pip install 'torch>={TORCH_FLOOR}')")
