"""Engine: exact resume, crash-safe checkpoints, safe loading, NaN stop, finetune shapes (DDP on CPU:
test_distributed_cpu.py)."""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import torch.nn as nn

import tests.engine_toy as toy
from map_core.engine.checkpoint import load_checkpoint
from map_core.errors import ConfigError, UserError
from map_core.weights import extract_state_dict
from tools.train import main

REPO = Path(__file__).resolve().parents[1]
TOY_CONFIG = """
task: {NAME: toy_classify, num_classes: 4}
model: {NAME: toy_mlp}
dataset:
  train: {NAME: toy_blobs, size: 64}
  val: {NAME: toy_blobs, size: 32, seed: 1}
optimizer: {lr: 1e-2}
scheduler: {epochs: 2, warmup_epochs: 1}
train: {total_batch_size: 16, num_workers: 0, log_every: 1}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_CONFIG)
    return path


def train(config: Path, root: Path, *extra: str) -> int:
    return main(["--config", str(config), "--exp-root", str(root), *extra])


def records(exp: Path, kind: str, epoch: int) -> List[dict]:
    lines = (exp / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind and r["epoch"] == epoch]


def test_exact_resume(config: Path, tmp_path: Path) -> None:
    root = tmp_path / "exp"
    assert train(config, root, "--exp-name", "full") == 0
    # interrupt at the first step of epoch 2 (4 updates per epoch), then resume without the fault
    assert train(config, root, "--exp-name", "split", "--set", "task.nan_at_step=5") == 2
    assert train(config, root, "--exp-name", "split", "--resume", "--set", "task.nan_at_step=null") == 0
    full, split = root / "toy/full", root / "toy/split"
    a, b = load_checkpoint(full / "last.pth"), load_checkpoint(split / "last.pth")
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["model"].items():
        assert (value - b["model"][key]).abs().max().item() <= 1e-6, key
    losses = lambda exp: [r["loss"] for r in records(exp, "train", 2)]  # noqa: E731
    assert len(losses(full)) == 4 and losses(full) == losses(split)


def test_nan_loss_stops_with_step_and_checkpoint(config: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "exp"
    assert train(config, root, "--set", "task.nan_at_step=6") == 2
    message = capsys.readouterr().err
    assert "global step 6 (epoch 2)" in message
    assert str(root / "toy/default/last.pth") in message


def test_nan_before_any_checkpoint_says_none_saved(config: Path, tmp_path: Path, capsys) -> None:
    assert train(config, tmp_path / "exp", "--set", "task.nan_at_step=2") == 2
    message = capsys.readouterr().err
    assert "global step 2 (epoch 1)" in message and "none saved yet" in message


def test_finetune_shape_mismatch_lists_key_and_shapes(config: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "pre.pth"
    torch.save({"model": toy.ToyMLP(hidden=8).state_dict()}, ckpt)
    assert train(config, tmp_path / "exp", "--finetune", str(ckpt)) == 2
    message = capsys.readouterr().err
    assert "fc1.weight: checkpoint (8, 8) vs model (16, 8)" in message
    assert not (tmp_path / "exp/toy/default/last.pth").exists()


def test_missing_dataset_fails_before_training(config: Path, tmp_path: Path, capsys) -> None:
    assert train(config, tmp_path / "exp", "--set", f"dataset.val.root={tmp_path / 'nowhere'}") == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "exp/toy/default/metrics.jsonl").exists()


def test_test_mode_and_fewshot(config: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "exp"
    assert train(config, root, "--set", "scheduler.epochs=1") == 0
    capsys.readouterr()
    assert train(config, root, "--test", "--set", "scheduler.epochs=1") == 0
    assert "top1" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert train(config, root, "--vote") == 2
    assert "does not support --vote" in capsys.readouterr().err
    fs = tmp_path / "fs.yaml"
    fs.write_text(TOY_CONFIG + "fewshot: {way: 4, shot: 2, folds: 2}\n")
    assert train(fs, root, "--set", "scheduler.epochs=1") == 0
    summary = json.loads((root / "fs/default/fewshot_summary.json").read_text())
    assert len(summary["per_fold"]) == 2 and summary["metric"] == "top1"


SAVER = """
import sys, torch
from map_core.engine.checkpoint import atomic_save
i = 0
while True:
    i += 1
    atomic_save({"model": {"w": torch.full((4_000_000,), float(i))}, "epoch": i}, sys.argv[1])
"""


def test_atomic_save_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env=env)
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(path)
        w = ckpt["model"]["w"]
        assert w.numel() == 4_000_000 and bool((w == float(ckpt["epoch"])).all())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    target, path = tmp_path / "PWNED", tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Evil(target)}, path)
    with pytest.raises(UserError, match=r"evil.pth.*not a plain checkpoint"):
        load_checkpoint(path)
    assert not target.exists()


def test_official_layout_loads(tmp_path: Path) -> None:
    sd = {"module.fc.weight": torch.ones(2, 2)}
    path = tmp_path / "official.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-3), "epoch": np.int64(3),
                "acc": np.float32(0.5)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["args"].lr == 1e-3
    assert list(extract_state_dict(ckpt)) == ["fc.weight"]
    assert list(extract_state_dict({"base_model": {"a": torch.zeros(1)}})) == ["a"]


def test_stale_temp_files_are_cleaned_and_best_is_a_copy(tmp_path: Path) -> None:
    from map_core.engine.checkpoint import atomic_copy, atomic_save

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pth.{dead.pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    atomic_save({"w": torch.ones(3)}, tmp_path / "last.pth")
    assert not stale.exists()
    atomic_copy(tmp_path / "last.pth", tmp_path / "best.pth")
    atomic_save({"w": torch.zeros(3)}, tmp_path / "last.pth")  # replacing last leaves best alone
    assert load_checkpoint(tmp_path / "best.pth")["w"].tolist() == [1.0, 1.0, 1.0]
    assert load_checkpoint(tmp_path / "last.pth")["w"].tolist() == [0.0, 0.0, 0.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_training_matches_eager(config: Path, tmp_path: Path) -> None:
    root = tmp_path / "exp"
    common = ["--set", "runtime.device=cuda", "train.precision=fp32", "model.dropout=0.0"]
    assert train(config, root, "--exp-name", "eager", *common, "train.cuda_graphs=false", "train.compile=false") == 0
    assert train(config, root, "--exp-name", "graphs", *common) == 0  # auto: graphs on one CUDA process
    eager, graphs = (load_checkpoint(root / f"toy/{n}/last.pth")["model"] for n in ("eager", "graphs"))
    for key, value in eager.items():
        torch.testing.assert_close(graphs[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_cuda_graphs_on_cpu_is_a_config_error(config: Path, tmp_path: Path, capsys) -> None:
    assert train(config, tmp_path / "exp", "--set", "runtime.device=cpu", "train.cuda_graphs=true") == 2
    assert "train.cuda_graphs needs one process on a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("compile_, graphs, device, world, capturable, want", [
    ("auto", "auto", "cpu", 1, True, (False, False, "CPU")),
    ("auto", "auto", "cuda", 1, True, (False, True, "auto: one CUDA process")),
    ("auto", "auto", "cuda", 2, True, (True, False, "auto: several processes (DDP)")),
    ("auto", "auto", "cuda", 1, False, (True, False, "auto: this task's step cannot be captured")),
    (False, False, "cuda", 1, True, (False, False, "as configured")),
    (True, "auto", "cuda", 1, True, (True, True, "auto: one CUDA process")),
    (True, False, "cpu", 1, True, (True, False, "as configured")),
])
def test_the_step_path_is_chosen_by_device_processes_and_task(compile_, graphs, device, world, capturable, want):
    from map_core.engine.trainer import TrainConfig, choose_step_path

    path = choose_step_path(TrainConfig(compile=compile_, cuda_graphs=graphs), torch.device(device), world,
                            capturable)
    assert (path.compile, path.cuda_graphs, path.why) == want
    assert path.describe().startswith("training step: ")


@pytest.mark.parametrize("device, world, capturable, message", [
    ("cpu", 1, True, "needs one process on a CUDA device"),
    ("cuda", 2, True, "needs one process on a CUDA device"),
    ("cuda", 1, False, "cannot be captured"),
])
def test_graphs_asked_for_where_they_cannot_run_are_a_config_error(device, world, capturable, message):
    from map_core.engine.trainer import TrainConfig, choose_step_path

    with pytest.raises(ConfigError, match=message):
        choose_step_path(TrainConfig(cuda_graphs=True), torch.device(device), world, capturable)


def test_mixup_is_applied_before_the_step_and_the_step_takes_soft_targets() -> None:
    """Mixup / CutMix draws on the host, so it runs in preprocess (outside a captured step); the step's
    loss on the soft targets is the soft cross-entropy computed by hand."""
    from map_core.engine.tasks import ClassifyTask

    torch.manual_seed(0)
    task = ClassifyTask({}, num_classes=4, mixup={"mixup_alpha": 1.0, "cutmix_alpha": 0.0})
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, soft = task.preprocess((images.clone(), labels), training=True)
    assert soft.shape == (6, 4) and torch.allclose(soft.sum(-1), torch.ones(6))
    lam = soft[0, 0].item()  # sample 0 (class 0) is mixed with the flipped batch's sample 5 (class 1)
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 4))
    loss, _ = task.train_step(model, (mixed, soft))
    want = -(soft * torch.log_softmax(model(mixed), -1)).sum(-1).mean()
    assert torch.allclose(loss, want)
    assert task.preprocess((images, labels), training=False)[1] is labels  # evaluation: untouched
