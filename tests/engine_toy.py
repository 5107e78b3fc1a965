"""A toy task for engine tests: tiny MLP, synthetic blobs, optional NaN or crash injection.

Also a driver: ``python tests/engine_toy.py <tools/train.py args>`` registers the toy parts and
runs ``tools/train.py``'s ``main`` (used for subprocess and torchrun tests).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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
    """Classification with faults and probes for engine tests (train_step calls count from 1):

    - ``nan_at_step``: the loss of that call turns NaN;
    - ``die_at_step`` / ``die_rank``: that rank kills itself (SIGKILL) at that call, as a lost worker;
    - ``dump_params``: a folder where each evaluation writes this rank's parameter checksum and its
      counts so far: train_step calls, gradient reductions (a DDP comm hook counts them) and buckets.
    """

    def __init__(self, cfg: Mapping[str, Any], num_classes: Optional[int] = None, label_smoothing: float = 0.0,
                 mixup: Optional[Dict[str, Any]] = None, nan_at_step: Optional[int] = None,
                 dump_params: Optional[str] = None, die_at_step: Optional[int] = None, die_rank: int = 1):
        super().__init__(cfg, num_classes, label_smoothing, mixup)
        self.nan_at_step, self.calls, self.dump_params = nan_at_step, 0, dump_params
        self.die_at_step, self.die_rank = die_at_step, die_rank
        self.reductions, self.buckets, self.hooked = 0, set(), False
        self.rank = int(os.environ.get("RANK", "0"))

    def evaluate(self, model: nn.Module, loader: Any) -> Dict[str, float]:
        """Also writes this rank's parameter checksum and counts when ``dump_params`` names a folder."""
        if self.dump_params:
            total = sum(p.double().sum().item() * (i + 1) for i, p in enumerate(model.parameters()))
            Path(self.dump_params, f"rank{self.rank}.txt").write_text(repr(total))
            Path(self.dump_params, f"rank{self.rank}.json").write_text(json.dumps(
                {"train_steps": self.calls, "reductions": self.reductions, "buckets": len(self.buckets)}))
        return super().evaluate(model, loader)

    def _count_reduction(self, state, bucket):  # no annotations: DDP checks them against its own types
        """A DDP comm hook: count, then all-reduce as DDP does by default."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        self.reductions += 1
        self.buckets.add(bucket.index())
        return default_hooks.allreduce_hook(state, bucket)

    @property
    def capturable(self) -> bool:
        """The faults count ``train_step`` calls in Python, and a step replayed from a CUDA graph makes
        no call: with a fault set the step is not captured (on one GPU it then runs eager), so the
        fault fires on a GPU as on a CPU."""
        return self.nan_at_step is None and self.die_at_step is None

    def train_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        if isinstance(model, DistributedDataParallel) and not self.hooked:
            model.register_comm_hook(None, self._count_reduction)
            self.hooked = True
        self.calls += 1
        if self.calls == self.die_at_step and self.rank == self.die_rank:
            os.kill(os.getpid(), signal.SIGKILL)
        loss, info = super().train_step(model, batch)
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
