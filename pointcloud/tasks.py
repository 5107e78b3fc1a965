"""Point-cloud tasks: Mamba3D's device-side sampling and augmentation around the generic engine tasks.

``point_classify`` (finetuning, few-shot): training input = FPS pool, random subset of ``npoints``,
then the augmentation; evaluation input = FPS to ``npoints`` (official ``validate``); ``--vote`` =
per test batch one FPS pool, ``votes`` random subsets each augmented, logits averaged
(official ``validate_vote``). ``point_pretrain``: optional FPS to ``npoints`` (ModelNet input) and
the augmentation, then the pretraining model's loss. ``point_svm``: FPS to ``npoints``, then the
generic linear SVM on the frozen ``forward_features``. ``point_partseg``: per-point part labels,
cross-entropy in training, instance / class mIoU restricted to each shape's category parts.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from map_core.engine.distributed import all_reduce_sum
from map_core.engine.progress import tracked
from map_core.engine.tasks import ClassifyTask, LinearSVMTask, PretrainTask, Task, to_device
from map_core.errors import ConfigError
from map_core.registry import TASKS
from pointcloud.data.transforms import (FPS_POOL, fps_points, fps_pool, isotropic_scale_and_shift, random_subset,
                                        rotate_about_up, scale_and_translate)

log = logging.getLogger(__name__)

AUGMENTATIONS: Dict[str, Optional[Callable[[torch.Tensor], torch.Tensor]]] = {
    "none": None,
    "scale_and_translate": scale_and_translate,
    "rotate": rotate_about_up,
    "isotropic_scale_and_shift": isotropic_scale_and_shift,
}


def augmentation(name: str, key: str) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The batch augmentation called ``name`` (None for "none"); ``key`` names the config key."""
    if name not in AUGMENTATIONS:
        raise ConfigError(f"{key}: unknown augmentation '{name}' (valid: {', '.join(AUGMENTATIONS)})")
    return AUGMENTATIONS[name]


def check_model_points(model: nn.Module, points: int, key: str) -> None:
    """ConfigError unless clouds of ``points`` points (the value of config ``key``) are enough for
    the model's point-group tokeniser (one point per group centre and per group member)."""
    tokenizer = getattr(model, "tokenizer", None)
    needed = getattr(tokenizer, "min_points", None)
    if needed is not None and points < needed:
        raise ConfigError(f"{key}={points}: the model takes {tokenizer.num_group} groups of "
                          f"{tokenizer.group_size} points from each cloud, so it needs at least {needed} points")


class ChecksPointCount:
    """Task mixin: each dataset is checked when built for the ``npoints`` the task samples, and the
    model for what it needs of them.

    Readers with a ``require_points(needed, reason)`` method raise DataError naming the file and the
    first cloud that is too small (instead of an FPS error in the first batch).
    """

    npoints: Optional[int] = None

    def build_dataset(self, split: str) -> Dataset:
        dataset = super().build_dataset(split)
        if self.npoints is not None and hasattr(dataset, "require_points"):
            dataset.require_points(self.npoints, "that task.npoints asks for")
        return dataset

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.npoints is not None:
            check_model_points(model, self.npoints, "task.npoints")
        return model


def _replace_points(batch: Any, points: torch.Tensor) -> Any:
    if isinstance(batch, (tuple, list)):
        return type(batch)([points, *batch[1:]])
    return points


@TASKS.register("point_classify")
class PointClassifyTask(ChecksPointCount, ClassifyTask):
    """Point-cloud classification (Mamba3D ``runner_finetune``). Metrics: top1 (overall accuracy),
    class_mean_acc, top5 (>= 5 classes), loss.

    npoints: points per cloud fed to the model; fps_pool: FPS pool size for the random subset
    (default from ``FPS_POOL``: 1024 -> 1200, 2048 -> 2400, 4096 -> 4800, 8192 -> 8192, capped at
    the cloud size); augment / vote_augment: "rotate" | "scale_and_translate" | "none"
    (vote_augment defaults to augment); votes: views per test cloud for ``--vote``.
    """

    def __init__(self, cfg: Mapping[str, Any], npoints: int = 1024, fps_pool: Optional[int] = None,
                 augment: str = "none", vote_augment: Optional[str] = None, votes: int = 10,
                 num_classes: Optional[int] = None, label_smoothing: float = 0.0):
        super().__init__(cfg, num_classes=num_classes, label_smoothing=label_smoothing)
        if votes < 1:
            raise ConfigError(f"task.votes={votes}: --vote averages the logits of that many views of each "
                              f"cloud; expected at least 1")
        if fps_pool is not None and fps_pool < npoints:
            raise ConfigError(f"task.fps_pool={fps_pool}: the random subsets of task.npoints={npoints} points are "
                              f"drawn from it; expected at least {npoints}")
        if fps_pool is None and npoints not in FPS_POOL:
            raise ConfigError(f"task.npoints={npoints} has no default FPS pool (defaults for {sorted(FPS_POOL)}); "
                              f"set task.fps_pool")
        self.npoints, self.pool, self.votes = npoints, fps_pool, votes
        self.augment = augmentation(augment, "task.augment")
        self.vote_augment = augmentation(vote_augment or augment, "task.vote_augment")

    def _pool(self, points: torch.Tensor) -> torch.Tensor:
        return fps_pool(points, self.npoints, self.pool)

    def preprocess(self, batch: Any, training: bool) -> Any:
        points = batch[0] if isinstance(batch, (tuple, list)) else batch
        if training:
            points = random_subset(self._pool(points), self.npoints)
            if self.augment is not None:
                points = self.augment(points)
        else:
            points = fps_points(points, self.npoints)
        return _replace_points(batch, points)

    @torch.no_grad()
    def vote(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        """Accuracy with ``votes`` augmented random subsets of one FPS pool per cloud, logits averaged."""
        model.eval()
        metrics = None
        for batch in tracked(loader, self.progress, "vote"):
            batch = to_device(batch, self.device)
            pool, labels = self._pool(batch[0]), batch[1]
            logits = 0
            for _ in range(self.votes):
                points = random_subset(pool, self.npoints)
                if self.vote_augment is not None:
                    points = self.vote_augment(points)
                with self.autocast():
                    logits = logits + self.logits(model, points).float()
            metrics = metrics or self.metrics(logits.shape[-1])
            metrics.update(logits / self.votes, labels)
        return {**(metrics or self.metrics(1)).compute(), "votes": float(self.votes)}


@TASKS.register("point_pretrain")
class PointPretrainTask(ChecksPointCount, PretrainTask):
    """Point-cloud pretraining (Mamba3D ``runner_pretrain``): the loss of ``model(points)``.

    npoints: when set, clouds are reduced to ``npoints`` by FPS first (the official path for
    ModelNet input; ShapeNet clouds come sampled by the reader); augment: applied in training.
    """

    def __init__(self, cfg: Mapping[str, Any], npoints: Optional[int] = None, augment: str = "none"):
        super().__init__(cfg)
        self.npoints = npoints
        self.augment = augmentation(augment, "task.augment")

    def preprocess(self, batch: Any, training: bool) -> Any:
        points = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.npoints is not None and points.shape[1] != self.npoints:
            points = fps_points(points, self.npoints)
        if training and self.augment is not None:
            points = self.augment(points)
        return _replace_points(batch, points)


@TASKS.register("point_svm")
class PointSVMTask(ChecksPointCount, LinearSVMTask):
    """Linear SVM on frozen point features (Point-MAE ``runner_pretrain`` ``validate``): every cloud
    is reduced to ``npoints`` by FPS (official: 1024 of the 8192 ModelNet points), then
    ``model.forward_features`` (B, F) feeds sklearn ``LinearSVC(C)``.
    """

    def __init__(self, cfg: Mapping[str, Any], npoints: int = 1024, C: float = 1.0, max_iter: int = 10000):
        super().__init__(cfg, C=C, max_iter=max_iter)
        self.npoints = npoints

    def preprocess(self, batch: Any, training: bool) -> Any:
        return _replace_points(batch, fps_points(batch[0], self.npoints))


def category_part_mask(category_parts: Sequence[Sequence[int]], num_parts: int,
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """(K, num_parts) bool: row k marks the part labels of category k."""
    mask = torch.zeros(len(category_parts), num_parts, dtype=torch.bool, device=device)
    for k, parts in enumerate(category_parts):
        mask[k, list(parts)] = True
    return mask


def shape_miou(pred: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean IoU over each shape's category parts (Point-MAE / PointNet protocol).

    pred, target: (B, N) part labels; allowed: (B, P) bool, the parts of each shape's category ->
    (B,) float64. A part absent from both prediction and truth has IoU 1.
    """
    num_parts = allowed.shape[1]
    p, t = F.one_hot(pred, num_parts).bool(), F.one_hot(target, num_parts).bool()  # (B, N, P)
    inter, union = (p & t).sum(1).double(), (p | t).sum(1).double()  # (B, P)
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return (iou * allowed).sum(1) / allowed.sum(1)


@TASKS.register("point_partseg")
class PointPartSegTask(Task):
    """Part segmentation (Point-MAE ``segmentation/main.py``). Batches: (points (B, N, 3),
    category (B,), part labels (B, N)); the dataset has ``category_parts`` (part labels per category).

    Training: per-point cross-entropy over all parts, after ``augment`` (Point-MAE:
    "isotropic_scale_and_shift"). Evaluation: each point takes the best-scoring part of its shape's
    category; per shape, the IoU of every part of the category (1 when a part is absent from both
    prediction and truth), averaged (``shape_miou``). Metrics (%): instance_miou (mean over shapes),
    class_miou (mean over the categories present of their shapes' mean), accuracy (per point); loss
    (cross-entropy over all parts). Per-category mIoU is logged. No voting.
    """

    metric = "instance_miou"
    higher_is_better = True

    def __init__(self, cfg: Mapping[str, Any], augment: str = "none"):
        super().__init__(cfg)
        self.augment = augmentation(augment, "task.augment")
        self.category_parts: Optional[List[List[int]]] = None
        self.cloud_points: Dict[str, int] = {}  # split -> points per cloud its reader samples

    def build_dataset(self, split: str) -> Any:
        dataset = super().build_dataset(split)
        parts = getattr(dataset, "category_parts", None)
        if parts is None:
            raise ConfigError(f"dataset.{split}: task point_partseg needs a part-segmentation dataset "
                              f"(with category_parts, e.g. ShapeNetPart), got {type(dataset).__name__}")
        if self.category_parts is not None and parts != self.category_parts:
            raise ConfigError(f"dataset.{split}: its categories and parts differ from the other splits'")
        self.category_parts = parts
        if isinstance(getattr(dataset, "npoints", None), int):
            self.cloud_points[split] = dataset.npoints
        return dataset

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.category_parts is not None:
            categories, labels = len(self.category_parts), 1 + max(max(p) for p in self.category_parts)
            sizes = getattr(model, "num_categories", categories), getattr(model, "num_parts", labels)
            if sizes[0] < categories or sizes[1] < labels:
                raise ConfigError(f"model: num_categories={sizes[0]}, num_parts={sizes[1]}, but the dataset has "
                                  f"{categories} categories and part labels up to {labels - 1}")
        for split, points in self.cloud_points.items():
            check_model_points(model, points, f"dataset.{split}.npoints")
        return model

    def preprocess(self, batch: Any, training: bool) -> Any:
        if training and self.augment is not None:
            return _replace_points(batch, self.augment(batch[0]))
        return batch

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, Any]]:
        points, category, target = batch
        logits = model(points, category)  # (B, N, P)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
        return loss, {"acc": (logits.argmax(-1) == target).float().mean() * 100}  # on the device: no host sync

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> Dict[str, float]:
        model.eval()
        category_parts = loader.dataset.category_parts
        k = len(category_parts)
        # [loss sum, points, correct points, per-category sum of shape mIoU (k), per-category shapes (k)]
        stats = torch.zeros(3 + 2 * k, dtype=torch.float64, device=self.device)
        mask = None
        for points, category, target in self.batches(loader):
            with self.autocast():
                logits = model(points, category).float()
            if mask is None:
                mask = category_part_mask(category_parts, logits.shape[-1], logits.device)
            allowed = mask[category]  # (B, P)
            pred = logits.masked_fill(~allowed[:, None], float("-inf")).argmax(-1)
            stats[0] += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            stats[1] += target.numel()
            stats[2] += (pred == target).sum()
            stats[3:3 + k].index_add_(0, category, shape_miou(pred, target, allowed))
            stats[3 + k:].index_add_(0, category, torch.ones_like(category, dtype=torch.float64))
        all_reduce_sum(stats)
        iou_sum, shapes = stats[3:3 + k], stats[3 + k:]
        seen = shapes > 0
        per_category = iou_sum[seen] / shapes[seen]
        names = getattr(loader.dataset, "categories", [str(i) for i in range(k)])
        log.info("mIoU per category: %s", ", ".join(
            f"{names[i]} {100 * v:.2f}" for i, v in zip(seen.nonzero().flatten().tolist(), per_category.tolist())))
        points = stats[1].clamp(min=1)
        return {
            "instance_miou": (100 * iou_sum.sum() / shapes.sum().clamp(min=1)).item(),
            "class_miou": (100 * per_category.mean()).item() if seen.any() else 0.0,
            "accuracy": (100 * stats[2] / points).item(),
            "loss": (stats[0] / points).item(),
        }
