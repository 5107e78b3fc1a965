"""The point-cloud modality for the tools: random example clouds and the point pictures."""
from __future__ import annotations

import torch

from map_core.modalities import Modality, register_modality

from .visualize import visualizer


def example_points(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """(B, size, 3) points inside the unit sphere, the farthest of each cloud on it."""
    pts = torch.randn(batch, size, 3, device=device)
    return pts / pts.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


register_modality(Modality(name="points", package=__package__, example_input=example_points, default_size=1024,
                           visualizer=visualizer,
                           drawable="a MAP pretraining model (e.g. pointmap_pretrain) or a part segmentation config"))
