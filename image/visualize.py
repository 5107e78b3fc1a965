"""Pictures of image MAP reconstructions: rows of [masked input, reconstruction, ground truth]."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from map_core.modalities import Draw
from map_core.pretrain import MAPPretrainer


@torch.no_grad()
def image_panels(model, imgs: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 mask: Optional[torch.Tensor] = None) -> List[np.ndarray]:
    """For each image: [masked input, reconstruction (visible + predicted), original] as HxWx3.

    imgs: (B, 3, H, W) normalised with mean/std. Predicted patches are in normalised-pixel units,
    so they are mapped back with each true patch's mean and variance (as MAE's visualisation).
    """
    model.eval()
    _, pred, mask = model(imgs, mask)
    target = model.patchify(imgs)
    t_mean, t_var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    pred = pred * (t_var + 1e-6).sqrt() + t_mean
    m = mask[..., None].to(pred.dtype)
    grey = torch.zeros_like(target)  # 0 in normalised units is the dataset mean colour
    masked_in = model.unpatchify(target * (1 - m) + grey * m)
    recon = model.unpatchify(target * (1 - m) + pred * m)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    to_img = lambda x: (x.cpu() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return [np.stack(p) for p in zip(to_img(masked_in), to_img(recon), to_img(imgs))]


def save_image_figure(panels: List[np.ndarray], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(6, 2 * len(panels)), squeeze=False)
    for row, triple in zip(axes, panels):
        for ax, img, title in zip(row, triple, ("masked input", "reconstruction", "ground truth")):
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def normalization(dataset) -> Tuple[Sequence[float], Sequence[float]]:
    """(mean, std) of the dataset's Normalize transform; (0, 1) per channel without one."""
    tf = getattr(dataset, "transform", None)
    norm = next((t for t in getattr(tf, "transforms", []) if hasattr(t, "mean")), None)
    return (norm.mean, norm.std) if norm is not None else ((0, 0, 0), (1, 1, 1))


def visualizer(model: nn.Module, dataset) -> Optional[Draw]:
    """Reconstruction rows for a MAP pretraining model; None for other models."""
    if not isinstance(model, MAPPretrainer):
        return None

    def draw(picks: Sequence[int], out: Path) -> None:
        imgs = torch.stack([dataset[i][0] for i in picks]).to(next(model.parameters()).device)
        save_image_figure(image_panels(model, imgs, *normalization(dataset)), out)

    return draw
