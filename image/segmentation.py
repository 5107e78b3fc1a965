"""Semantic segmentation with a MAP backbone: UperNet + auxiliary FCN head, whole-image and
sliding-window inference, dataset-level mIoU / mAcc / aAcc, and the ``semantic_segmentation`` task.

``map_upernet`` (the heads of mmseg's BEiT / MAE ADE20K configs): the multi-scale adapter
(:mod:`image.adapter`, ``beit`` pyramid: four evenly spaced taps -> strides p/4 ... 2p, D channels)
feeds

* ``decode_head``, UperNet: pyramid pooling (adaptive average pools 1, 2, 3, 6, each a 1x1 conv to
  ``channels``, upsampled) on the coarsest level and a 3x3 bottleneck; 1x1 lateral convs on the
  others, top-down sums, a 3x3 conv per level, every level upsampled to the finest and
  concatenated, a 3x3 fusion conv, dropout 0.1, a 1x1 classifier. Every conv: BatchNorm + ReLU.
* ``auxiliary_head``, FCN: a 3x3 conv (``aux_channels``, BatchNorm, ReLU) on the stride-p level,
  dropout 0.1, a 1x1 classifier; its loss weighs ``aux_weight`` (0.4) in training only.

Logits are upsampled bilinearly to the input size. The loss is pixel cross-entropy averaged over
the labelled pixels (``ignore_index`` 255 left out).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.ops import Conv2dNormActivation

from map_core.engine.schema import ExperimentConfig
from map_core.engine.distributed import all_reduce_sum, is_dist
from map_core.engine.tasks import Task
from map_core.errors import ConfigError
from map_core.registry import MODELS, TASKS

from .adapter import MultiScaleAdapter
from .models import sized_encoder

log = logging.getLogger(__name__)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """mmseg's ConvModule with BN and ReLU: conv (no bias, 'same' padding), BatchNorm2d, ReLU."""
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, norm_layer=nn.BatchNorm2d,
                                activation_layer=nn.ReLU)


def classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout2d, then a 1x1 conv to the class logits (weights normal(0, 0.01), bias 0, as mmseg)."""
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout), conv)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UperNetHead(nn.Module):
    """forward(levels: list of (B, in_channels[i], h_i, w_i), finest first) -> (B, K, h_0, w_0)."""

    def __init__(self, in_channels: Sequence[int], channels: int = 512, num_classes: int = 150,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        *fine, coarse = in_channels
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(coarse, channels, 1)) for s in self.pool_scales)
        self.bottleneck = conv_bn_relu(coarse + len(self.pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in fine)
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in fine)
        self.fpn_bottleneck = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.conv_seg = classifier(channels, num_classes, dropout)

    def pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize(pool(x), x.shape[-2:]) for pool in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, levels)] + [self.pyramid_pooling(levels[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.conv_seg(self.fpn_bottleneck(torch.cat([outs[0]] + [resize(x, size) for x in outs[1:]], dim=1)))


class FCNHead(nn.Module):
    """forward(x: (B, in_channels, h, w)) -> (B, K, h, w): one 3x3 conv-BN-ReLU, dropout, 1x1 conv."""

    def __init__(self, in_channels: int, channels: int = 256, num_classes: int = 150, dropout: float = 0.1):
        super().__init__()
        self.convs = conv_bn_relu(in_channels, channels, 3)
        self.conv_seg = classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.convs(x))


class MAPUperNet(MultiScaleAdapter):
    """forward(imgs (B, C, H, W), with_aux=False) -> logits (B, K, H, W), and with ``with_aux`` the
    auxiliary head's logits (B, K, H, W) too. Any H, W (padded inside, cropped back)."""

    head_prefixes = ("decode_head.",)

    def __init__(self, num_classes: int = 150, channels: int = 512, aux_channels: int = 256,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), **adapter: Any):
        super().__init__(num_taps=4, pyramid="beit", pyramid_norm="batch", **adapter)
        width = self.feature_pyramid.out_channels
        self.num_classes = num_classes
        self.decode_head = UperNetHead([width] * 4, channels, num_classes, pool_scales)
        self.auxiliary_head = FCNHead(width, aux_channels, num_classes)

    def forward(self, imgs: torch.Tensor, with_aux: bool = False):
        height, width = imgs.shape[-2:]
        levels = self.features(imgs)
        padded = [s * self.tokenizer.patch_size for s in levels[2].shape[-2:]]  # the padded input size
        logits = resize(self.decode_head(levels), padded)[..., :height, :width]
        if not with_aux:
            return logits
        return logits, resize(self.auxiliary_head(levels[2]), padded)[..., :height, :width]


@MODELS.register("map_upernet")
def map_upernet(size: Optional[str] = None, variant: str = "hybrid", img_size: int | Sequence[int] = 512,
                patch_size: int = 16, in_chans: int = 3, num_classes: int = 150, embed_dim: Optional[int] = None,
                depth: Optional[int] = None, num_heads: Optional[int] = None, layout: Optional[str] = None,
                drop_path_rate: float = 0.1, channels: int = 512, aux_channels: int = 256,
                pool_scales: Sequence[int] = (1, 2, 3, 6)) -> MAPUperNet:
    """UperNet on a MAP encoder of a named ``size`` (tiny ... huge) or explicit sizes, as the
    classifier's (:func:`image.models.sized_encoder`). ``img_size`` sets the position table's grid
    (other sizes are interpolated); ``channels`` / ``aux_channels``: the widths of the two heads."""
    return MAPUperNet(num_classes=num_classes, channels=channels, aux_channels=aux_channels, pool_scales=pool_scales,
                      img_size=img_size, patch_size=patch_size, in_chans=in_chans, drop_path_rate=drop_path_rate,
                      **sized_encoder(size, variant, embed_dim, depth, num_heads, layout))


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list:
    """(y1, y2, x1, x2) of mmseg's sliding windows: a grid of ``stride`` steps, the last window of
    each row and column moved back inside the image; windows are min(crop, side) wide."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            windows.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


def slide_inference(model: nn.Module, imgs: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """imgs (B, C, H, W) -> logits (B, K, H, W): the mean of the logits of every window covering
    a pixel (:func:`sliding_windows`); all windows of the batch go through the model at once."""
    windows = sliding_windows(*imgs.shape[-2:], crop, stride)
    logits = model(torch.cat([imgs[..., y1:y2, x1:x2] for y1, y2, x1, x2 in windows])).float()
    out = logits.new_zeros(imgs.shape[0], logits.shape[1], *imgs.shape[-2:])
    count = logits.new_zeros(1, 1, *imgs.shape[-2:])
    for (y1, y2, x1, x2), part in zip(windows, logits.split(imgs.shape[0])):
        out[..., y1:y2, x1:x2] += part
        count[..., y1:y2, x1:x2] += 1
    return out / count


def segmentation_metrics(confmat: torch.Tensor) -> Dict[str, float]:
    """confmat (K, K), rows the true class, columns the predicted one -> ``miou``, ``macc`` (the
    means of per-class IoU and accuracy over the classes where they are defined: IoU where the class
    is in the truth or the prediction, accuracy where it is in the truth) and ``aacc`` (pixel
    accuracy), in %."""
    confmat = confmat.double()
    hits, truth, predicted = confmat.diag(), confmat.sum(1), confmat.sum(0)
    iou = hits / (truth + predicted - hits)  # NaN where the class is nowhere
    acc = hits / truth
    return {"miou": 100 * iou.nanmean().item(), "macc": 100 * acc.nanmean().item(),
            "aacc": 100 * (hits.sum() / truth.sum().clamp(min=1)).item()}


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixel cross-entropy averaged over the labelled pixels (0 when a batch has none, not NaN)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


@TASKS.register("semantic_segmentation")
class SemanticSegmentationTask(Task):
    """Batches: training (images (B, 3, h, w), labels (B, h, w) int64); evaluation (list of images,
    list of labels at the original size). ``inference``: ``whole`` or ``slide`` (windows of
    ``crop_size`` every ``stride`` pixels); logits are resized to the label's size before the
    argmax. Metrics (%): ``miou`` (the task metric), ``macc``, ``aacc`` from one confusion matrix
    over the split (torchmetrics, summed over ranks). Under DDP on GPUs the BatchNorms are synced."""

    metric = "miou"
    higher_is_better = True

    def __init__(self, cfg: ExperimentConfig, num_classes: int = 150, ignore_index: int = 255,
                 aux_weight: float = 0.4, inference: str = "whole", crop_size: int = 512, stride: int = 341):
        super().__init__(cfg)
        if inference not in ("whole", "slide"):
            raise ConfigError(f"task.inference: expected whole or slide, got '{inference}'")
        if not 0 < stride <= crop_size:
            raise ConfigError(f"task.stride {stride} must be in 1 .. crop_size ({crop_size})")
        self.num_classes, self.ignore_index, self.aux_weight = num_classes, ignore_index, aux_weight
        self.inference, self.crop_size, self.stride = inference, crop_size, stride

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if is_dist() and torch.distributed.get_world_size() > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, Any]]:
        imgs, labels = batch
        logits, aux = model(imgs, with_aux=True)
        seg_loss = masked_cross_entropy(logits, labels, self.ignore_index)
        aux_loss = masked_cross_entropy(aux, labels, self.ignore_index)
        return seg_loss + self.aux_weight * aux_loss, {"seg_loss": seg_loss.detach(), "aux_loss": aux_loss.detach()}

    def predict(self, model: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (B, C, H, W) -> logits (B, K, H, W) by ``inference``."""
        with self.autocast():
            if self.inference == "slide":
                return slide_inference(model, imgs, self.crop_size, self.stride)
            return model(imgs).float()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        from torchmetrics.classification import MulticlassJaccardIndex

        model.eval()
        jaccard = MulticlassJaccardIndex(self.num_classes, ignore_index=self.ignore_index,
                                         validate_args=False).to(self.device)
        for imgs, labels in self.batches(loader):
            for img, label in zip(imgs, labels):
                logits = resize(self.predict(model, img[None]), label.shape)
                jaccard.update(logits.argmax(1), label[None])
        return segmentation_metrics(all_reduce_sum(jaccard.confmat.clone()))
