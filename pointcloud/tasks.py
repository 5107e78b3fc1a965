"""Point-cloud tasks: Mamba3D's device-side sampling and augmentation around the generic engine tasks.

``point_classify`` (finetuning, few-shot): training input = FPS pool, random subset of ``npoints``,
then the augmentation; evaluation input = FPS to ``npoints`` (official ``validate``); ``--vote`` =
per test batch one FPS pool, ``votes`` random subsets each augmented, logits averaged
(official ``validate_vote``). ``point_pretrain``: optional FPS to ``npoints`` (ModelNet input) and
the augmentation, then the pretraining model's loss. ``point_svm``: FPS to ``npoints``, then the
generic linear SVM on the frozen ``forward_features``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from map_core.engine.progress import tracked
from map_core.engine.tasks import ClassifyTask, LinearSVMTask, PretrainTask, to_device
from map_core.errors import ConfigError
from map_core.registry import TASKS
from pointcloud.data.transforms import FPS_POOL, fps_pool, random_subset, rotate_about_up, scale_and_translate
from pointcloud.ops import fps, gather

AUGMENTATIONS: Dict[str, Optional[Callable[[torch.Tensor], torch.Tensor]]] = {
    "none": None,
    "scale_and_translate": scale_and_translate,
    "rotate": rotate_about_up,
}


def augmentation(name: str, key: str) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The batch augmentation called ``name`` (None for "none"); ``key`` names the config key."""
    if name not in AUGMENTATIONS:
        raise ConfigError(f"{key}: unknown augmentation '{name}' (valid: {', '.join(AUGMENTATIONS)})")
    return AUGMENTATIONS[name]


def fps_points(points: torch.Tensor, npoints: int) -> torch.Tensor:
    """The ``npoints`` FPS points of each cloud (official ``misc.fps``). (B, N, C) -> (B, npoints, C).

    With ``npoints == N`` the cloud is returned unchanged: FPS would only reorder it, keeping point
    0 first, so the tokeniser's own FPS picks the same centres.
    """
    if npoints == points.shape[1]:
        return points
    return gather(points, fps(points[..., :3].contiguous(), npoints))


class ChecksPointCount:
    """Task mixin: each dataset is checked when built for the ``npoints`` the task samples.

    Readers with a ``require_points(needed, reason)`` method raise DataError naming the file and the
    first cloud that is too small (instead of an FPS error in the first batch).
    """

    npoints: Optional[int] = None

    def build_dataset(self, split: str) -> Dataset:
        dataset = super().build_dataset(split)
        if self.npoints is not None and hasattr(dataset, "require_points"):
            dataset.require_points(self.npoints, "that task.npoints asks for")
        return dataset


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
        stats: Optional[torch.Tensor] = None
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
            stats = self._accumulate(stats, logits / self.votes, labels)
        metrics = self._summarise(stats)
        metrics["votes"] = float(self.votes)
        return metrics


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
