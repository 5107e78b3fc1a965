"""Pictures of image MAP models, one row per image: [masked input, reconstruction, ground truth]
for pretraining models, [image, prediction, ground truth] class maps for segmentation models,
[ground truth, prediction] boxes and masks (torchvision's drawing utilities) for detection models."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from map_core.modalities import Draw
from map_core.pretrain import MAPPretrainer

from .detection import MAPMaskRCNN
from .segmentation import MAPUperNet, resize

IGNORED_COLOUR = (0.0, 0.0, 0.0)  # unlabelled pixels in class maps
SCORE_THRESHOLD = 0.5  # detections drawn
MIN_DRAWN_SIDE = 256  # smaller images are enlarged before boxes and names are drawn on them


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


def save_image_figure(panels: List[np.ndarray], path: Path,
                      titles: Sequence[str] = ("masked input", "reconstruction", "ground truth")) -> None:
    """One row per entry of ``panels`` (a stack of HxWx3 images in [0, 1], one per title)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), len(titles), figsize=(2 * len(titles), 2 * len(panels)), squeeze=False)
    for row, images in zip(axes, panels):
        for ax, img, title in zip(row, images, titles):
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def normalization(dataset) -> Tuple[Sequence[float], Sequence[float]]:
    """(mean, std) of the dataset (its ``mean`` / ``std`` attributes, else its Normalize transform);
    (0, 1) per channel without either."""
    if hasattr(dataset, "mean") and hasattr(dataset, "std"):
        return dataset.mean, dataset.std
    tf = getattr(dataset, "transform", None)
    norm = next((t for t in getattr(tf, "transforms", []) if hasattr(t, "mean")), None)
    return (norm.mean, norm.std) if norm is not None else ((0, 0, 0), (1, 1, 1))


def class_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) distinct colours in [0, 1]: matplotlib's tab20, then a seeded random palette."""
    import matplotlib

    tab = np.array(matplotlib.colormaps["tab20"].colors)
    extra = np.random.default_rng(0).uniform(0.2, 1.0, (max(0, num_classes - len(tab)), 3))
    return np.concatenate([tab, extra])[:num_classes]


def colour_map(labels: torch.Tensor, colours: np.ndarray) -> np.ndarray:
    """labels (H, W) class indices (out-of-range = ignored) -> (H, W, 3) colours."""
    labels = labels.cpu().numpy()
    out = np.empty((*labels.shape, 3))
    out[:] = IGNORED_COLOUR
    known = labels < len(colours)
    out[known] = colours[labels[known]]
    return out


def to_display(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised image (3, H, W) -> (H, W, 3) in [0, 1]."""
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (mean, std))
    return (img.cpu().float() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def segmentation_panels(model: MAPUperNet, dataset, picks: Sequence[int]) -> List[np.ndarray]:
    """[image, predicted classes, true classes] per pick; whole-image inference, logits resized to
    the label's size."""
    model.eval()
    device = next(model.parameters()).device
    colours, (mean, std) = class_colours(model.num_classes), normalization(dataset)
    panels = []
    for i in picks:
        img, label = dataset[i]
        logits = resize(model(img[None].to(device)).float(), label.shape)
        shown = resize(img[None], label.shape)[0]
        panels.append(np.stack([to_display(shown, mean, std), colour_map(logits[0].argmax(0), colours),
                                colour_map(label, colours)]))
    return panels


def draw_instances(img: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                   names: Sequence[str], colours: np.ndarray) -> np.ndarray:
    """img (3, H, W) in [0, 1] with ``masks`` (N, H, W) bool and ``boxes`` (N, 4) drawn in the colour
    of their ``labels`` (1..K) and named -> (sH, sW, 3) in [0, 1], enlarged s times (nearest) when
    the image is under ``MIN_DRAWN_SIDE`` pixels, so that the names stay legible."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    scale = max(1, MIN_DRAWN_SIDE // max(img.shape[-2:]))
    canvas = (F.interpolate(img[None].cpu(), scale_factor=scale)[0].clamp(0, 1) * 255).to(torch.uint8)
    if len(boxes):
        masks = F.interpolate(masks[None].cpu().float(), scale_factor=scale)[0]
        boxes = boxes.cpu() * scale
        rgb = [tuple(int(255 * c) for c in colours[int(k) - 1]) for k in labels]
        canvas = draw_segmentation_masks(canvas, masks.bool(), alpha=0.5, colors=rgb)
        canvas = draw_bounding_boxes(canvas, boxes, [names[int(k) - 1] for k in labels], colors=rgb)
    return canvas.permute(1, 2, 0).numpy() / 255.0


@torch.no_grad()
def detection_panels(model: MAPMaskRCNN, dataset, picks: Sequence[int]) -> List[np.ndarray]:
    """[ground truth, prediction] per pick: boxes and masks, detections of score >= 0.5."""
    model.eval()
    device = next(model.parameters()).device
    names = getattr(dataset, "class_names", [str(k) for k in range(1, model.num_classes + 1)])
    colours = class_colours(model.num_classes)
    panels = []
    for i in picks:
        img, target = dataset[i]
        out = model([img.to(device)])[0]
        keep = out["scores"] >= SCORE_THRESHOLD
        panels.append(np.stack([
            draw_instances(img, target["boxes"], target["labels"], target["masks"], names, colours),
            draw_instances(img, out["boxes"][keep], out["labels"][keep], out["masks"][keep, 0] > 0.5, names, colours),
        ]))
    return panels


def visualizer(model: nn.Module, dataset) -> Optional[Draw]:
    """Reconstruction rows for a MAP pretraining model, class maps for ``map_upernet``, boxes and
    masks for ``map_maskrcnn``; None for other models."""
    if isinstance(model, MAPUperNet):
        return lambda picks, out: save_image_figure(segmentation_panels(model, dataset, picks), out,
                                                    ("image", "prediction", "ground truth"))
    if isinstance(model, MAPMaskRCNN):
        return lambda picks, out: save_image_figure(detection_panels(model, dataset, picks), out,
                                                    ("ground truth", "prediction"))
    if not isinstance(model, MAPPretrainer):
        return None

    def draw(picks: Sequence[int], out: Path) -> None:
        imgs = torch.stack([dataset[i][0] for i in picks]).to(next(model.parameters()).device)
        save_image_figure(image_panels(model, imgs, *normalization(dataset)), out)

    return draw
