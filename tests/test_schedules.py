"""Learning-rate schedules: poly and step against hand-computed values, and iteration-based runs."""
import json
from pathlib import Path

import pytest
import torch

import tests.engine_toy  # noqa: F401  (registers the toy task, model and dataset)
from map_core.engine.optim import SchedulerConfig, build_scheduler, run_length
from map_core.errors import ConfigError
from tools.train import main


def lrs(cfg: SchedulerConfig, updates_per_epoch: int, lr: float = 1.0) -> list:
    """The lr each update of the run uses, as the trainer steps the schedule."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_scheduler(optimizer, cfg, updates_per_epoch)
    out = []
    for step in range(run_length(cfg, updates_per_epoch)[0]):
        out.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(step + 1)
    return out


def test_poly_after_warmup():
    # mmseg: linear warm-up over 2 updates, then lr * (1 - (t - 2) / (10 - 2)) ** power
    got = lrs(SchedulerConfig(NAME="poly", iterations=10, warmup_iterations=2, warmup_lr=0.0, min_lr=0.0,
                              power=2.0), updates_per_epoch=3)
    assert got == pytest.approx([0.0, 0.5] + [(1 - k / 8) ** 2 for k in range(8)])


def test_step_milestones_count_from_the_start():
    # detectron2's WarmupMultiStepLR: update t (0-based) uses lr * 0.1 ** #(milestones <= t)
    got = lrs(SchedulerConfig(NAME="step", iterations=12, warmup_iterations=2, warmup_lr=0.01,
                              milestones=(5, 9), decay_rate=0.1), updates_per_epoch=4)
    assert got == pytest.approx([0.01, 0.505, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    in_epochs = lrs(SchedulerConfig(NAME="step", epochs=3, warmup_epochs=0, milestones=(2,)), updates_per_epoch=2)
    assert in_epochs == pytest.approx([1, 1, 1, 1, 0.1, 0.1])
    with pytest.raises(ConfigError, match="milestones"):
        lrs(SchedulerConfig(NAME="step", iterations=5, milestones=(7,)), updates_per_epoch=2)


def test_iteration_based_run_stops_inside_an_epoch(tmp_path: Path):
    config = tmp_path / "toy.yaml"
    config.write_text("""
task: {NAME: toy_classify, num_classes: 4}
model: {NAME: toy_mlp}
dataset: {train: {NAME: toy_blobs, size: 64}, val: {NAME: toy_blobs, size: 32, seed: 1}}
scheduler: {NAME: poly, iterations: 10, warmup_iterations: 2}
train: {total_batch_size: 16, num_workers: 0, log_every: 1}
""")
    assert main(["--config", str(config), "--exp-root", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "toy" / "default" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == list(range(1, 11))  # 4 updates per epoch
    assert [r["epoch"] for r in rows if r["type"] == "epoch"] == [1, 2, 3]  # the third cut after 2 updates
    assert torch.load(tmp_path / "toy" / "default" / "last.pth", weights_only=True)["global_step"] == 10
