"""Engine: exact resume, crash-safe checkpoints, safe loading, NaN stop, finetune shapes (DDP on CPU:
test_distributed_cpu.py)."""
import argparse
import json
import os
import pickle
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
    eager = "train.cuda_graphs=false"  # one step path for every run (a run with a fault is never captured)
    assert train(config, root, "--exp-name", "full", "--set", eager) == 0
    # interrupt at the first step of epoch 2 (4 updates per epoch), then resume without the fault
    assert train(config, root, "--exp-name", "split", "--set", eager, "task.nan_at_step=5") == 2
    assert train(config, root, "--exp-name", "split", "--resume", "--set", eager, "task.nan_at_step=null") == 2
    assert train(config, root, "--exp-name", "split", "--resume", "--allow-changed-config",
                 "--set", eager, "task.nan_at_step=null") == 0
    full, split = root / "toy/full", root / "toy/split"
    a, b = load_checkpoint(full / "last.pth"), load_checkpoint(split / "last.pth")
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["model"].items():
        assert (value - b["model"][key]).abs().max().item() <= 1e-6, key
    losses = lambda exp: [r["loss"] for r in records(exp, "train", 2)]  # noqa: E731
    assert len(losses(full)) == 4 and losses(full) == losses(split)


def test_resume_with_changed_keys_is_refused_unless_allowed(config: Path, tmp_path: Path, capsys) -> None:
    root, exp = tmp_path / "exp", tmp_path / "exp" / "toy" / "default"
    assert train(config, root) == 0  # 2 epochs of 4 updates (64 samples, batch 16)
    changed = ["--set", "scheduler.epochs=4", "train.total_batch_size=32", "optimizer.lr=0.5"]
    assert train(config, root, "--resume", *changed) == 2
    err = capsys.readouterr().err
    for text in ("scheduler.epochs: 2 -> 4", "train.total_batch_size: 16 -> 32", "optimizer.lr: 0.01 -> 0.5",
                 "--allow-changed-config"):
        assert text in err
    assert "lr: 0.01" in (exp / "config.yaml").read_text()  # the refused run changed nothing
    assert train(config, root, "--resume", "--allow-changed-config", *changed) == 0
    assert "lr: 0.5" in (exp / "config.yaml").read_text()
    # the new schedule, at the place of epoch 2 of 4: 2 updates per epoch, 2 of warm-up, cosine to t = 8
    # (timm: lr(t) = min + (base - min) (1 + cos(pi t / 8)) / 2); the update at position t uses lr(t - 1)
    resumed = [r for r in map(json.loads, (exp / "metrics.jsonl").read_text().splitlines())
               if r["type"] == "train" and r["step"] > 8]
    assert [r["step"] for r in resumed] == [9, 10, 11, 12]
    expected = [1e-6 + (0.5 - 1e-6) * (1 + np.cos(np.pi * t / 8)) / 2 for t in (4, 5, 6, 7)]
    np.testing.assert_allclose([r["lr"] for r in resumed], expected, rtol=1e-6)
    assert load_checkpoint(exp / "last.pth")["epoch"] == 4


def test_every_fold_is_checked_before_the_first_one_trains(config: Path, tmp_path: Path, capsys) -> None:
    import pointcloud  # noqa: F401  (the ModelNetFewShot reader and the fewshot: section)

    folder = tmp_path / "splits" / "4way_2shot"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fold in (0, 1):  # fewshot.folds is 3: fold 2 has no file
        items = [(rng.standard_normal((16, 3)).astype(np.float32), k % 4) for k in range(8)]
        (folder / f"{fold}.pkl").write_bytes(pickle.dumps({"train": items, "test": items}))
    reader = f"NAME: ModelNetFewShot, data_path: {tmp_path / 'splits'}"
    fewshot = tmp_path / "fs.yaml"
    fewshot.write_text(TOY_CONFIG.replace("NAME: toy_blobs, size: 64", reader)
                       .replace("NAME: toy_blobs, size: 32, seed: 1", reader + ", subset: test")
                       + "fewshot: {way: 4, shot: 2, folds: 3}\n")
    root = tmp_path / "exp"
    assert train(fewshot, root) == 2
    assert f"{folder / '2.pkl'}" in capsys.readouterr().err
    assert not list((root / "fs" / "default").glob("fold_*"))  # no fold trained


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_config_error_under_torchrun_is_reported_once(config: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "tests/engine_toy.py"), "--config", str(config), "--exp-root", str(tmp_path / "exp"),
           "--set", "optimizer.lr=-1", "runtime.device=cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: 'optimizer.lr' (set in command line) must be >= 0, got -1.0"], result.stderr[-3000:]


def test_only_rank_0_reports_a_config_error(monkeypatch, capsys) -> None:
    from map_core.engine.console import report_error

    monkeypatch.setenv("RANK", "1")
    assert report_error(ConfigError("bad key")) == 2 and capsys.readouterr().err == ""
    assert report_error(UserError("broken sample")) == 2  # may be this rank's own: it names the rank
    assert capsys.readouterr().err == "error: (rank 1) broken sample\n"
    monkeypatch.setenv("RANK", "0")
    assert report_error(ConfigError("bad key")) == 2 and capsys.readouterr().err == "error: bad key\n"


def test_a_device_or_backend_the_machine_lacks_is_a_config_error(config: Path, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train(config, tmp_path / "exp", "--set", "runtime.device=cuda") == 2
    assert "runtime.device is 'cuda', but no CUDA GPU is visible" in capsys.readouterr().err
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert train(config, tmp_path / "exp", "--set", "runtime.backends.scan=triton") == 2
    assert "runtime.backends.scan: backend 'triton' runs on cuda tensors and this run is on cpu" in \
        capsys.readouterr().err


def test_a_bad_progress_interval_is_a_config_error(config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MAP_PROGRESS_SECONDS", "abc")
    assert train(config, tmp_path / "exp") == 2
    assert "$MAP_PROGRESS_SECONDS='abc': expected a number of seconds >= 0" in capsys.readouterr().err


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


INSIDE_ONLY = "; compiled blocks run only inside graphs"


@pytest.mark.parametrize("compile_, graphs, device, world, capturable, want", [
    ("auto", "auto", "cpu", 1, True, (False, False, "CPU")),
    ("auto", "auto", "cuda", 1, True, (False, True, "auto: one CUDA process")),
    ("auto", "auto", "cuda", 2, True, (False, False, "auto: several processes (DDP)")),
    ("auto", "auto", "cuda", 1, False, (False, False, "auto: this task's step cannot be captured")),
    (False, False, "cuda", 1, True, (False, False, "as configured")),
    (True, "auto", "cuda", 1, True, (True, True, "auto: one CUDA process")),
    (True, False, "cpu", 1, True, (True, False, "as configured")),
    ("cuda", "auto", "cuda", 1, True, (True, True, "auto: one CUDA process")),
    ("cuda", "auto", "cuda", 2, True, (False, False, "auto: several processes (DDP)" + INSIDE_ONLY)),
    ("cuda", "auto", "cuda", 1, False, (False, False, "auto: this task's step cannot be captured" + INSIDE_ONLY)),
    ("cuda", False, "cuda", 1, True, (False, False, "as configured")),
    (True, "auto", "cuda", 2, True, (True, False, "auto: several processes (DDP)")),
    ("cuda", "auto", "cpu", 1, True, (False, False, "CPU")),
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


def test_a_toy_step_with_a_fault_is_not_replayed_on_a_gpu() -> None:
    """The toy's NaN and kill faults count Python calls, which a replayed graph never makes: a task
    with one is not capturable, so on one GPU auto runs it uncaptured and the fault fires."""
    from map_core.engine.trainer import TrainConfig, choose_step_path

    cuda = torch.device("cuda")
    assert choose_step_path(TrainConfig(), cuda, 1, toy.ToyClassifyTask({}, num_classes=4).capturable).cuda_graphs
    for fault in ({"nan_at_step": 3}, {"die_at_step": 2}):
        task = toy.ToyClassifyTask({}, num_classes=4, **fault)
        assert not choose_step_path(TrainConfig(), cuda, 1, task.capturable).cuda_graphs, fault


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


def _previous_metrics(batches, num_classes: int) -> dict:
    """ClassifyTask's hand-written accumulation before torchmetrics, kept as the oracle."""
    stats = torch.zeros(4 + 2 * num_classes, dtype=torch.float64)
    for logits, labels in batches:
        top = logits.topk(min(5, num_classes), dim=-1).indices
        hit1 = top[:, 0] == labels
        stats[0] += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        stats[1] += len(labels)
        stats[2] += hit1.sum()
        stats[3] += (top == labels[:, None]).any(-1).sum()
        stats[4:4 + num_classes] += torch.bincount(labels[hit1], minlength=num_classes)
        stats[4 + num_classes:] += torch.bincount(labels, minlength=num_classes)
    n = stats[1].clamp(min=1)
    correct, count = stats[4:4 + num_classes], stats[4 + num_classes:]
    seen = count > 0
    metrics = {"loss": (stats[0] / n).item(), "top1": (100 * stats[2] / n).item(),
               "class_mean_acc": (100 * (correct[seen] / count[seen]).mean()).item()}
    if num_classes >= 5:
        metrics["top5"] = (100 * stats[3] / n).item()
    return metrics


@pytest.mark.parametrize("num_classes", [3, 7, 40])
def test_torchmetrics_give_the_previous_numbers(num_classes: int) -> None:
    from map_core.engine.tasks import ClassificationMetrics

    g = torch.Generator().manual_seed(num_classes)
    # three batches of odd sizes; the last class never occurs in the targets (but is predicted)
    batches = [(torch.randn(b, num_classes, generator=g) * 3,
                torch.randint(0, num_classes - 1, (b,), generator=g)) for b in (5, 17, 9)]
    batches[0][0][:, -1] += 100
    metrics = ClassificationMetrics(num_classes, torch.device("cpu"))
    for logits, labels in batches:
        metrics.update(logits, labels)
    assert metrics.compute() == _previous_metrics(batches, num_classes)
