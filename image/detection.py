"""Detection and instance segmentation with a MAP backbone: torchvision's Mask R-CNN on the
multi-scale adapter (ViTDet), COCO box / mask AP through pycocotools, and the ``detection`` task.

``map_maskrcnn`` (ViTDet-B's Mask R-CNN, built from torchvision's parts): the adapter's ``vitdet``
pyramid (the last layout step only, LayerNorm, ``fpn_channels`` per level, strides p/4 ... 4p, i.e.
1/4 ... 1/64 at patch 16) feeds

* ``rpn``: anchors of 8 strides (32 ... 512 px at patch 16), ratios 0.5 / 1 / 2; a head of two 3x3
  convs; IoU 0.7 / 0.3, 256 anchors per image (half positive), 2000 (training) / 1000 proposals
  per level before NMS 0.7, 1000 kept (``proposals_per_img``);
* ``roi_heads``: 7x7 RoIAlign on the four finest levels, four 3x3 convs with LayerNorm and one fc
  layer of ``representation_size`` (the "4conv1fc" box head), box classifier and regressor over
  K + 1 classes; 512 RoIs per image (``rois_per_img``; a quarter positive, IoU 0.5); at test time score 0.05, NMS 0.5,
  100 detections; 14x14 RoIAlign, four 3x3 convs with LayerNorm, a deconv and a per-class mask.
* ``transform``: torchvision's ``GeneralizedRCNNTransform``: images normalised (ImageNet mean /
  std), resized so that the longer side is ``img_size`` (a no-op on the training crops), batched;
  detections go back to the input size with :func:`paste_masks` (no host synchronisation).

forward(images: list of (3, H, W) in [0, 1], targets=None): in training the dict of the five
losses; in evaluation one dict per image with ``boxes`` (N, 4) x1 y1 x2 y2, ``labels`` (N,),
``scores`` (N,), ``masks`` (N, 1, H, W) probabilities, at the input size.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d
from torch.utils.data import DataLoader
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from map_core.engine.schema import ExperimentConfig
from map_core.engine.distributed import all_gather_objects, is_dist
from map_core.engine.tasks import Task
from map_core.registry import MODELS, TASKS

from .adapter import MultiScaleAdapter
from .models import sized_encoder

log = logging.getLogger(__name__)

LEVELS = ("0", "1", "2", "3", "pool")  # torchvision's names of the pyramid levels, finest first
AP_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")  # COCOeval.stats[:6]
IOU_TYPES = ("bbox", "segm")


class MAPMaskRCNN(MultiScaleAdapter):
    """Mask R-CNN on the MAP adapter (see the module docstring)."""

    head_prefixes = ("rpn.", "roi_heads.")

    def __init__(self, num_classes: int = 80, fpn_channels: int = 256, representation_size: int = 1024,
                 detections_per_img: int = 100, img_size: int = 1024, proposals_per_img: int = 1000,
                 rois_per_img: int = 512, **adapter: Any):
        super().__init__(img_size=img_size, num_taps=1, pyramid="vitdet", pyramid_norm="layer",
                         out_channels=fpn_channels, extra_level=True, **adapter)
        patch, c = self.tokenizer.patch_size, fpn_channels
        strides = [patch / 4, patch / 2, patch, 2 * patch, 4 * patch]
        anchors = AnchorGenerator(tuple((int(8 * s),) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(c, 3, conv_depth=2), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
            positive_fraction=0.5, pre_nms_top_n=dict(training=2 * proposals_per_img, testing=proposals_per_img),
            post_nms_top_n=dict(training=proposals_per_img, testing=proposals_per_img), nms_thresh=0.7)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(list(LEVELS[:4]), 7, 2),
            FastRCNNConvFCHead((c, 7, 7), [c] * 4, [representation_size], norm_layer=LayerNorm2d),
            FastRCNNPredictor(representation_size, num_classes + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=rois_per_img, positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5, detections_per_img=detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(list(LEVELS[:4]), 14, 2),
            mask_head=MaskRCNNHeads(c, [c] * 4, 1, norm_layer=LayerNorm2d),
            mask_predictor=MaskRCNNPredictor(c, c, num_classes + 1))
        self.transform = GeneralizedRCNNTransform(img_size, img_size, list(IMAGENET_DEFAULT_MEAN),
                                                  list(IMAGENET_DEFAULT_STD), size_divisible=max(32, self.size_divisor))
        self.num_classes = num_classes

    def forward(self, images: Sequence[torch.Tensor], targets: Optional[Sequence[Dict[str, torch.Tensor]]] = None):
        sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(list(images), None if targets is None else list(targets))
        features = OrderedDict(zip(LEVELS, self.features(batch.tensors)))
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        for det, resized, size in zip(detections, batch.image_sizes, sizes):
            det["boxes"] = resize_boxes(det["boxes"], resized, size)
            if "masks" in det:
                det["masks"] = paste_masks(det["masks"], det["boxes"], size)
        return detections


def _bilinear_weights(lo: torch.Tensor, hi: torch.Tensor, size: int, m: int) -> torch.Tensor:
    """(N, size, m): the bilinear weights (zero outside the grid) that sample an m-cell grid
    spanning [lo, hi] (per row of N) at the pixel centres 0.5 ... size - 0.5."""
    centres = torch.arange(size, device=lo.device, dtype=torch.float32) + 0.5
    extent = (hi - lo).clamp_min(1e-6)
    src = (centres[None] - lo[:, None]) / extent[:, None] * m - 0.5  # grid coordinates, cell centres at 0 ... m - 1
    first = src.floor()
    frac = src - first
    cells = torch.arange(m, device=lo.device, dtype=torch.float32)[None, None]
    return ((1 - frac)[..., None] * (cells == first[..., None]) + frac[..., None] * (cells == first[..., None] + 1))


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Mask probabilities (N, 1, M, M) on their boxes (N, 4) x1 y1 x2 y2 -> (N, 1, H, W) on the image,
    bilinear with zeros outside the mask grid (``F.grid_sample(align_corners=False)`` with the grid
    spanning the box, as detectron2 pastes; torchvision rounds each box to whole pixels first). Two
    batched matmuls per image (the interpolation is separable), with no host synchronisation, where
    torchvision's ``paste_masks_in_image`` synchronises several times per detection."""
    n, m = masks.shape[0], masks.shape[-1]
    height, width = int(size[0]), int(size[1])
    if n == 0:
        return masks.new_zeros(0, 1, height, width)
    boxes = boxes.float()
    rows = _bilinear_weights(boxes[:, 1], boxes[:, 3], height, m)  # (N, H, M)
    cols = _bilinear_weights(boxes[:, 0], boxes[:, 2], width, m)   # (N, W, M)
    pasted = rows @ masks[:, 0].float() @ cols.transpose(1, 2)
    return pasted[:, None].to(masks.dtype)


@MODELS.register("map_maskrcnn")
def map_maskrcnn(size: Optional[str] = None, variant: str = "hybrid", img_size: int = 1024, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 80, embed_dim: Optional[int] = None, depth: Optional[int] = None,
                 num_heads: Optional[int] = None, layout: Optional[str] = None, drop_path_rate: float = 0.1,
                 fpn_channels: int = 256, representation_size: int = 1024, detections_per_img: int = 100,
                 proposals_per_img: int = 1000, rois_per_img: int = 512) -> MAPMaskRCNN:
    """Mask R-CNN on a MAP encoder of a named ``size`` (tiny ... huge) or explicit sizes, as the
    classifier's (:func:`image.models.sized_encoder`). ``img_size``: the side the test images are
    resized to (longer side) and the position table's grid. ``proposals_per_img``: RPN proposals kept
    per image (twice as many per level before NMS in training); ``rois_per_img``: RoIs sampled per
    image for the box head in training (ViTDet: 1000 and 512, sized for 1024-px COCO images)."""
    return MAPMaskRCNN(num_classes=num_classes, fpn_channels=fpn_channels, representation_size=representation_size,
                       detections_per_img=detections_per_img, img_size=img_size, proposals_per_img=proposals_per_img,
                       rois_per_img=rois_per_img, patch_size=patch_size,
                       in_chans=in_chans, drop_path_rate=drop_path_rate,
                       **sized_encoder(size, variant, embed_dim, depth, num_heads, layout))


def mask_rle(mask: np.ndarray) -> Dict[str, Any]:
    """A binary mask (H, W) -> COCO compressed RLE with ``counts`` as text (json-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def coco_results(outputs: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int],
                 label_to_category: Mapping[int, int], mask_threshold: float = 0.5) -> List[Dict[str, Any]]:
    """Detector outputs (one dict per image, as ``MAPMaskRCNN`` returns) -> COCO result records:
    ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score`` and, with masks, ``segmentation``
    (RLE of the mask probabilities above ``mask_threshold``)."""
    records = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].float().cpu()
        boxes[:, 2:] -= boxes[:, :2]
        masks = (out["masks"][:, 0] > mask_threshold).cpu().numpy() if "masks" in out else None
        for k, (box, label, score) in enumerate(zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist())):
            record = {"image_id": int(image_id), "category_id": label_to_category[label], "bbox": box,
                      "score": float(score)}
            if masks is not None:
                record["segmentation"] = mask_rle(masks[k])
            records.append(record)
    return records


def coco_evaluate(coco_gt: Any, results: List[Dict[str, Any]], image_ids: Sequence[int],
                  iou_types: Sequence[str] = IOU_TYPES) -> Dict[str, float]:
    """pycocotools' COCOeval of ``results`` on the images ``image_ids`` of ``coco_gt``: for each IoU
    type ``<type>_ap``, ``_ap50``, ``_ap75``, ``_ap_small``, ``_ap_medium``, ``_ap_large`` in %
    (0 without any result; NaN where COCOeval has no value, e.g. no small objects, as detectron2).
    COCOeval's printed table goes to the log."""
    from pycocotools.cocoeval import COCOeval

    metrics: Dict[str, float] = {}
    for iou_type in iou_types:
        if not results:
            metrics.update({f"{iou_type}_{name}": 0.0 for name in AP_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
            evaluator.params.imgIds = sorted(set(image_ids))
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        log.info("COCO %s evaluation:\n%s", iou_type, printed.getvalue().rstrip())
        metrics.update({f"{iou_type}_{name}": 100 * float(v) if v >= 0 else float("nan")
                        for name, v in zip(AP_NAMES, evaluator.stats)})
    return metrics


@TASKS.register("detection")
class DetectionTask(Task):
    """Batches: (list of images (3, H, W) in [0, 1], list of targets with ``boxes``, ``labels``,
    ``masks``, ``image_id``), as ``COCODetection`` gives. The loss is the sum of Mask R-CNN's five
    losses (each logged). Evaluation: box and mask AP (%) of the split through pycocotools against
    the dataset's json (``bbox_ap`` is the task metric), computed on the main rank from every
    rank's detections."""

    metric = "bbox_ap"
    higher_is_better = True
    capturable = False  # proposals and detections have data-dependent counts: compiled, not replayed

    def __init__(self, cfg: ExperimentConfig, num_classes: int = 80):
        super().__init__(cfg)
        self.num_classes = num_classes

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, Any]]:
        images, targets = batch
        losses = model(list(images), list(targets))
        return sum(losses.values()), {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        model.eval()
        dataset = loader.dataset
        image_ids, results = [], []
        for images, targets in self.batches(loader):
            with self.autocast():
                outputs = model(list(images))
            ids = [int(t["image_id"]) for t in targets]
            image_ids += ids
            results += coco_results(outputs, ids, dataset.label_to_category)
        parts = all_gather_objects((image_ids, results))
        metrics = {}
        if not is_dist() or torch.distributed.get_rank() == 0:
            every_id = [i for ids, _ in parts for i in ids]
            metrics = coco_evaluate(dataset.coco, [r for _, records in parts for r in records], every_id)
        return all_gather_objects(metrics)[0]
