"""A toy task for engine tests: tiny MLP, synthetic blobs, optional NaN or crash injection.

Also a driver: ``python tests/engine_toy.py <tools/train.py args>`` registers the toy parts and
runs ``tools/train.py``'s ``main`` (used for subprocess and torchrun tests).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

from map_core.engine.tasks import ClassifyTask
from map_core.errors import UserError
from map_core.registry import DATASETS, MODELS, TASKS


class ToyMLP(nn.Module):
    """x: (B, in_dim) -> logits (B, num_classes); dropout so the RNG state matters."""

    def __init__(self, in_dim: int = 8, hidden: int = 16, num_classes: int = 4, dropout: float = 0.1):
        super().__init__()
        self.fc1, self.drop, self.head = nn.Linear(in_dim, hidden), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc1(x) + self.pos_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(x)))


class ToyBlobs(Dataset):
    """``size`` points around ``num_classes`` fixed centres; per-item noise from the torch RNG.

    ``crash_in_fold``: reading an item of that few-shot fold raises, as a run killed there would stop.
    """

    def __init__(self, size: int = 64, in_dim: int = 8, num_classes: int = 4, seed: int = 0,
                 noise: float = 0.1, fold: int = 0, root: Optional[str] = None, crash_in_fold: Optional[int] = None):
        if root is not None and not Path(root).exists():
            raise UserError(f"dataset root '{root}' does not exist: set dataset.<split>.root")
        g = torch.Generator().manual_seed(seed + 1000 * fold)
        centres = torch.randn(num_classes, in_dim, generator=g) * 2
        self.labels = torch.arange(size) % num_classes
        self.points = centres[self.labels] + torch.randn(size, in_dim, generator=g)
        self.noise, self.crash = noise, crash_in_fold == fold

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.crash:
            raise UserError("injected crash")
        return self.points[i] + self.noise * torch.randn(self.points.shape[1]), self.labels[i]


class ToyClassifyTask(ClassifyTask):
    """Classification whose loss turns NaN at train_step call ``nan_at_step`` (1-based)."""

    def __init__(self, cfg: Mapping[str, Any], num_classes: Optional[int] = None, label_smoothing: float = 0.0,
                 mixup: Optional[Dict[str, Any]] = None, nan_at_step: Optional[int] = None,
                 dump_params: Optional[str] = None):
        super().__init__(cfg, num_classes, label_smoothing, mixup)
        self.nan_at_step, self.calls, self.dump_params = nan_at_step, 0, dump_params

    def evaluate(self, model: nn.Module, loader: Any) -> Dict[str, float]:
        """Also writes this rank's parameter checksum when ``dump_params`` names a folder."""
        if self.dump_params:
            import os

            total = sum(p.double().sum().item() * (i + 1) for i, p in enumerate(model.parameters()))
            rank = os.environ.get("RANK", "0")
            Path(self.dump_params, f"rank{rank}.txt").write_text(repr(total))
        return super().evaluate(model, loader)

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        loss, info = super().train_step(model, batch)
        self.calls += 1
        if self.calls == self.nan_at_step:
            loss = loss * float("nan")
        return loss, info


def register() -> None:
    for registry, name, fn in ((MODELS, "toy_mlp", ToyMLP), (DATASETS, "toy_blobs", ToyBlobs),
                               (TASKS, "toy_classify", ToyClassifyTask)):
        if name not in registry:
            registry.register(name, fn)


register()

if __name__ == "__main__":
    from tools.train import main

    sys.exit(main(sys.argv[1:]))
