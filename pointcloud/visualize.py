"""Pictures of point clouds: PointMAP reconstructions (visible groups, reconstruction, ground truth as
3D scatter plots, and .ply files when open3d is installed) and predicted next to true parts."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from map_core.masking import mask_to_indices
from map_core.tokens import gather_tokens
from map_core.modalities import Draw
from map_core.pretrain import MAPPretrainer

from .tasks import category_part_mask, shape_miou

log = logging.getLogger(__name__)


@torch.no_grad()
def point_panels(model, pts: torch.Tensor, mask: Optional[torch.Tensor] = None
                 ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each cloud: (visible points, visible + predicted masked points, ground-truth groups)."""
    model.eval()
    tok = model.tokenizer(pts)
    _, pred, mask = model(pts, mask)
    keep, masked = mask_to_indices(mask)
    centre = tok.coords
    groups = tok.target + centre.unsqueeze(2)  # (B, G, K, 3) absolute
    k = groups.shape[2]
    rebuilt = pred.reshape(*pred.shape[:2], k, 3) + centre.unsqueeze(2)
    out = []
    for b in range(pts.shape[0]):
        visible = gather_tokens(groups[b:b + 1], keep[b:b + 1]).reshape(-1, 3)
        guess = gather_tokens(rebuilt[b:b + 1], masked[b:b + 1]).reshape(-1, 3)
        out.append((visible.cpu().numpy(), torch.cat([visible, guess]).cpu().numpy(),
                    groups[b].reshape(-1, 3).cpu().numpy()))
    return out


def save_cloud_grid(rows: Sequence[Sequence[Tuple[np.ndarray, np.ndarray, str]]], path: Path, **scatter) -> None:
    """Save rows of 3D scatter plots, each cell (cloud (N, 3), colour values (N,), title), y up (the
    ShapeNet / ScanObjectNN convention), one view for all; ``scatter``: matplotlib scatter options."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(row) for row in rows)
    fig = plt.figure(figsize=(3 * cols, 3 * len(rows)))
    for r, row in enumerate(rows):
        for c, (cloud, colour, title) in enumerate(row):
            ax = fig.add_subplot(len(rows), cols, cols * r + c + 1, projection="3d")
            ax.scatter(cloud[:, 0], cloud[:, 2], cloud[:, 1], c=colour, **scatter)
            ax.view_init(elev=15, azim=-70)
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_point_figure(panels, path: Path) -> None:
    """Rows of [visible groups, reconstruction, ground truth] coloured by height, and .ply files of
    each when open3d is installed."""
    titles = ("visible groups", "reconstruction", "ground truth")
    save_cloud_grid([[(cloud, cloud[:, 1], title) for cloud, title in zip(triple, titles)] for triple in panels],
                    path, s=1, cmap="viridis")
    try:
        import open3d as o3d
    except ImportError:
        log.warning("open3d is not installed (pip install -e '.[vis]'): no .ply files written")
        return
    for r, triple in enumerate(panels):
        for cloud, name in zip(triple, ("visible", "recon", "gt")):
            pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
            o3d.io.write_point_cloud(str(path.with_name(f"{path.stem}_{r}_{name}.ply")), pc)


@torch.no_grad()
def partseg_panels(model, pts: torch.Tensor, category: torch.Tensor, target: torch.Tensor,
                   category_parts: Sequence[Sequence[int]]) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """For each cloud: (points (N, 3), predicted parts (N,), true parts (N,), shape mIoU in %), parts
    numbered within the shape's category (0 = its first part).

    pts: (B, N, 3), category: (B,), target: (B, N) global part labels; the prediction is the best
    part of the shape's category (as the point_partseg evaluation).
    """
    model.eval()
    logits = model(pts, category).float()
    allowed = category_part_mask(category_parts, logits.shape[-1], logits.device)[category]
    pred = logits.masked_fill(~allowed[:, None], float("-inf")).argmax(-1)
    miou = shape_miou(pred, target, allowed)
    local = torch.zeros(logits.shape[-1], dtype=torch.long, device=logits.device)
    for parts in category_parts:
        local[list(parts)] = torch.arange(len(parts), device=logits.device)
    return [(pts[b].cpu().numpy(), local[pred[b]].cpu().numpy(), local[target[b]].cpu().numpy(), 100 * float(miou[b]))
            for b in range(pts.shape[0])]


def save_partseg_figure(panels, path: Path, names: Optional[Sequence[str]] = None) -> None:
    """Rows of [predicted parts, true parts], points coloured by part label (one colour per part of
    the category, the same in both panels)."""
    rows = [[(cloud, pred, f"{names[r] + ': ' if names else ''}predicted (mIoU {miou:.1f}%)"),
             (cloud, truth, "true parts")] for r, (cloud, pred, truth, miou) in enumerate(panels)]
    save_cloud_grid(rows, path, s=2, cmap="tab10", vmin=0, vmax=9)


def visualize_partseg(model, dataset, picks: Sequence[int], out: Path) -> Path:
    """Predicted and true parts of ``dataset[i]`` for i in ``picks``, saved to ``out``."""
    items = [dataset[i] for i in picks]
    device = next(model.parameters()).device
    pts, category, target = (torch.stack([item[j] for item in items]).to(device) for j in range(3))
    panels = partseg_panels(model, pts, category, target, dataset.category_parts)
    names = [dataset.categories[int(c)] for c in category] if hasattr(dataset, "categories") else None
    save_partseg_figure(panels, out, names)
    return out


def visualizer(model: nn.Module, dataset) -> Optional[Draw]:
    """Parts for a part segmentation dataset (one with ``category_parts``), reconstructions for a
    MAP pretraining model; None otherwise."""
    if hasattr(dataset, "category_parts"):
        return lambda picks, out: visualize_partseg(model, dataset, picks, out)
    if not isinstance(model, MAPPretrainer):
        return None

    def draw(picks: Sequence[int], out: Path) -> None:
        pts = torch.stack([dataset[i][0] for i in picks]).to(next(model.parameters()).device)
        save_point_figure(point_panels(model, pts), out)

    return draw
