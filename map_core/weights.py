"""Loading weights into a model whose keys may only partly match (pretrained -> finetuned)."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from map_core.errors import UserError


class CheckpointShapeError(UserError, ValueError):
    """A checkpoint tensor does not fit the model (the message names every such key)."""


def check_shapes(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointShapeError listing every key whose checkpoint shape differs from the model's."""
    own = model.state_dict()
    bad = [f"  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointShapeError(f"shape mismatch loading {source} ({len(bad)} keys):\n" + "\n".join(bad))


def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"):
    """Shape-check, then load non-strictly; returns torch's (missing_keys, unexpected_keys).

    The caller (the engine) reports the missing and unexpected keys.
    """
    check_shapes(model, state_dict, source)
    return model.load_state_dict(state_dict, strict=False)
