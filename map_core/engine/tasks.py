"""Task plug-ins: how a modality tells the engine what a step, a metric and an evaluation are.

A task is registered in ``TASKS`` and named by ``task.NAME``; its other ``task:`` keys are its
constructor arguments. Batches from datasets are ``(inputs, labels)`` tuples. ``preprocess`` runs
on the device after the batch is transferred (point clouds subsample and augment there).
Generic tasks here: ``pretrain``, ``classify``, ``linear_svm``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassStatScores

from map_core.errors import ConfigError, UserError
from map_core.registry import DATASETS, MODELS, TASKS, check_kwargs
from map_core.engine.distributed import all_gather_objects, all_reduce_sum
from map_core.engine.progress import ProgressFactory, tracked
from map_core.engine.schema import ExperimentConfig

log = logging.getLogger(__name__)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in nested tuples / lists / dicts to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _build(registry: Any, section: Mapping[str, Any], where: str, **extra: Any) -> Any:
    """Build ``section`` (``NAME`` + keyword arguments). Builders signal invalid arguments (a head
    count that does not divide the width, an image size that is not a multiple of the patch) with
    ValueError; that becomes a ConfigError naming the section."""
    try:
        return registry.build(section, where=where, **extra)
    except KeyError as err:
        raise ConfigError(str(err.args[0]) if err.args else str(err)) from None
    except UserError:
        raise
    except ValueError as err:
        raise ConfigError(f"{where} ({section.get('NAME')}): {err}") from err


def build_task(cfg: ExperimentConfig) -> "Task":
    """The task named by ``cfg.task.NAME``, given the whole config and its other ``task`` keys."""
    section = cfg.task
    try:
        builder = TASKS.get(section["NAME"])
        options = {k: v for k, v in section.items() if k != "NAME"}
        check_kwargs(builder, options, f"task '{section['NAME']}'")
    except KeyError as err:
        raise ConfigError(str(err.args[0]) if err.args else str(err)) from None
    return builder(cfg, **options)


class Task:
    """Base task. Subclasses override ``train_step`` and ``evaluate`` (and maybe ``preprocess``)."""

    metric: str = "loss"
    higher_is_better: bool = False
    trains: bool = True  # False: no training loop; the engine calls fit() then evaluate()
    # whether train_step can be captured as a CUDA graph: no host reads of device values and shapes
    # fixed by the batch's shapes (and the model's graph_static_args); False: compiled, not replayed
    capturable: bool = True
    progress: Optional[ProgressFactory] = None  # set by the engine on the main rank

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.amp_dtype: Optional[torch.dtype] = None

    def bind(self, device: torch.device, amp_dtype: Optional[torch.dtype]) -> None:
        """Set by the engine: where batches go and which autocast dtype (None = fp32)."""
        self.device, self.amp_dtype = device, amp_dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # no cast cache: each weight is cast once per forward anyway, and CUDA-graph capture
        # (train.cuda_graphs) requires it off
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def build_model(self) -> nn.Module:
        return _build(MODELS, self.cfg.model, "model")

    def build_dataset(self, split: str) -> Dataset:
        return _build(DATASETS, self.cfg.dataset[split], f"dataset.{split}")

    def preprocess(self, batch: Any, training: bool) -> Any:
        """Runs on the device after transfer, outside a captured step; identity by default."""
        return batch

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Return (scalar loss, extra values to log: floats or 0-dim device tensors, never read on
        the host here, so a step does not wait for the device)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        """Metrics over the whole split, reduced across ranks."""
        raise NotImplementedError

    def vote(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        raise UserError(f"task '{type(self).__name__}' does not support --vote")

    def batches(self, loader: DataLoader, training: bool = False, desc: str = "evaluate"):
        """Iterate device-side, preprocessed batches (reported to ``progress`` under ``desc``)."""
        for batch in tracked(loader, self.progress, desc):
            yield self.preprocess(to_device(batch, self.device), training)


def model_loss(output: Any) -> torch.Tensor:
    """The loss from a pretraining forward: ``{"loss": ...}`` or a tuple whose first item is it."""
    if isinstance(output, Mapping):
        return output["loss"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


@TASKS.register("pretrain")
class PretrainTask(Task):
    """Self-supervised pretraining: ``model(inputs)`` returns the loss; val metric = mean loss."""

    metric = "loss"
    higher_is_better = False

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return model_loss(model(inputs)), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in self.batches(loader):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            with self.autocast():
                loss = model_loss(model(inputs))
            total += torch.stack([loss.double() * len(inputs), torch.tensor(len(inputs), device=self.device).double()])
        all_reduce_sum(total)
        return {"loss": (total[0] / total[1].clamp(min=1)).item()}


@TASKS.register("classify")
class ClassifyTask(Task):
    """Supervised classification: cross-entropy (label smoothing, optional timm Mixup / CutMix).

    ``mixup`` takes timm ``Mixup`` arguments, e.g. ``{mixup_alpha: 0.8, cutmix_alpha: 1.0}``.
    Metrics: top1, top5 (when classes >= 5), class-mean accuracy (all in %), loss.
    """

    metric = "top1"
    higher_is_better = True

    def __init__(self, cfg: ExperimentConfig, num_classes: Optional[int] = None,
                 label_smoothing: float = 0.0, mixup: Optional[Dict[str, Any]] = None):
        super().__init__(cfg)
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.mixup = self._build_mixup(mixup) if mixup else None

    def _build_mixup(self, options: Dict[str, Any]) -> Any:
        from timm.data import Mixup

        if self.num_classes is None:
            raise ConfigError("task.mixup needs task.num_classes")
        try:
            check_kwargs(Mixup.__init__, options, "task.mixup")
        except KeyError as err:
            raise ConfigError(err.args[0]) from None
        return Mixup(**options, label_smoothing=self.label_smoothing, num_classes=self.num_classes)

    def logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        out = model(inputs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def preprocess(self, batch: Any, training: bool) -> Any:
        """Training batches get Mixup / CutMix here, before the step (its mixing is drawn on the
        host, so it stays outside a captured step): labels become soft targets (B, classes)."""
        if training and self.mixup is not None:
            inputs, soft = self.mixup(batch[0], batch[1])
            return (inputs, soft, *batch[2:])
        return batch

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        inputs, labels = batch[0], batch[1]
        logits = self.logits(model, inputs)
        if labels.is_floating_point():  # soft targets from Mixup / CutMix (preprocess)
            loss = torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            return loss, {}
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == labels).float().mean() * 100  # a device tensor: no host sync per step
        return loss, {"acc": acc}

    def metrics(self, num_classes: int) -> "ClassificationMetrics":
        """An empty accumulator of this task's metrics for ``num_classes`` logits (the task's
        ``num_classes`` when set), on the task's device."""
        return ClassificationMetrics(self.num_classes or num_classes, self.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        model.eval()
        metrics: Optional[ClassificationMetrics] = None
        for batch in self.batches(loader):
            inputs, labels = batch[0], batch[1]
            with self.autocast():
                logits = self.logits(model, inputs).float()
            metrics = metrics or self.metrics(logits.shape[-1])
            metrics.update(logits, labels)
        return (metrics or self.metrics(1)).compute()  # a rank without samples still joins the reduction


class ClassificationMetrics:
    """A split's classification metrics, accumulated batch by batch by torchmetrics (which also sums
    them over ranks): top1, top5 (with >= 5 classes), class_mean_acc (the mean accuracy of the
    classes present in the targets), all in %, and loss (the mean cross-entropy)."""

    def __init__(self, num_classes: int, device: torch.device):
        # counts per class (true positives, ..., support); top-5 hits; the summed loss in float64
        self.per_class = MulticlassStatScores(num_classes, top_k=1, average=None, validate_args=False).to(device)
        self.top5 = (MulticlassStatScores(num_classes, top_k=5, average="micro", validate_args=False).to(device)
                     if num_classes >= 5 else None)
        self.loss = SumMetric().set_dtype(torch.float64).to(device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits (B, num_classes) float, labels (B,) int64."""
        self.per_class.update(logits, labels)
        if self.top5 is not None:
            self.top5.update(logits, labels)
        self.loss.update(F.cross_entropy(logits, labels, reduction="sum").double())

    def compute(self) -> Dict[str, float]:
        """The metrics over every rank's batches."""
        hits, support = self.per_class.compute()[:, [0, 4]].double().unbind(-1)
        n, seen = support.sum().clamp(min=1), support > 0
        metrics = {
            "loss": (self.loss.compute() / n).item(),
            "top1": (100 * hits.sum() / n).item(),
            "class_mean_acc": (100 * (hits[seen] / support[seen]).mean()).item() if seen.any() else 0.0,
        }
        if self.top5 is not None:
            metrics["top5"] = (100 * self.top5.compute()[0].double() / n).item()
        return metrics


@TASKS.register("linear_svm")
class LinearSVMTask(Task):
    """Frozen ``model.forward_features(x)`` on train and test, sklearn ``LinearSVC``; no training loop."""

    metric = "accuracy"
    higher_is_better = True
    trains = False

    def __init__(self, cfg: ExperimentConfig, C: float = 0.01, max_iter: int = 10000):
        super().__init__(cfg)
        self.C, self.max_iter = C, max_iter
        self.classifier: Any = None

    @torch.no_grad()
    def features(self, model: nn.Module, loader: DataLoader) -> Tuple[np.ndarray, np.ndarray]:
        """Features (N, C) and labels (N,) gathered from every rank."""
        model.eval()
        feats, labels = [], []
        for batch in self.batches(loader, desc="features"):
            with self.autocast():
                feats.append(model.forward_features(batch[0]).float().flatten(1).cpu().numpy())
            labels.append(batch[1].cpu().numpy())
        parts = all_gather_objects((feats, labels))
        return (np.concatenate([f for p in parts for f in p[0]]),
                np.concatenate([y for p in parts for y in p[1]]))

    def fit(self, model: nn.Module, loader: DataLoader) -> None:
        from sklearn.svm import LinearSVC

        x, y = self.features(model, loader)
        log.info("fitting LinearSVC(C=%g) on %d features of size %d", self.C, *x.shape)
        self.classifier = LinearSVC(C=self.C, max_iter=self.max_iter).fit(x, y)

    def evaluate(self, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
        if self.classifier is None:
            raise UserError("linear_svm: evaluate() called before fit()")
        x, y = self.features(model, loader)
        return {"accuracy": float((self.classifier.predict(x) == y).mean() * 100)}
