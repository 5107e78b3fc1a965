"""The image modality for the tools: random example images and the pictures (reconstructions,
segmentation class maps, detections)."""
from __future__ import annotations

import torch

from map_core.modalities import Modality, register_modality

from .visualize import visualizer


def example_images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """(B, 3, size, size) standard normal, as normalised images."""
    return torch.randn(batch, 3, size, size, device=device)


register_modality(Modality(name="image", package=__package__, example_input=example_images, default_size=224,
                           visualizer=visualizer,
                           drawable="a MAP pretraining model (e.g. map_pretrain), map_upernet or map_maskrcnn"))
