"""End to end through tools/train.py on tiny on-disk data: pretrain -> finetune -> test / vote;
pretrain -> linear SVM; few-shot.

The repository configs are used with --set overrides that shrink the model (48 channels, 3 blocks,
16 groups of 8) and the clouds (300 points), so every run takes seconds on a CPU.
"""
import json
import pickle
from pathlib import Path
from typing import List

import h5py
import numpy as np
import pytest
import torch
import yaml

from map_core.config import Config
from map_core.engine.checkpoint import load_checkpoint
from map_core.errors import ConfigError
from map_core.weights import extract_state_dict
from pointcloud.models import PointMAPClassifier, pointmap_pretrain
from pointcloud.tasks import PointClassifyTask
from tools.train import main

TINY = ["model.trans_dim=48", "model.encoder_dims=48", "model.depth=3", "model.num_group=16",
        "model.group_size=8", "train.num_workers=0", "train.total_batch_size=4",
        "scheduler.epochs=1", "scheduler.warmup_epochs=0", "runtime.device=cpu"]
FINETUNE = TINY + ["task.npoints=256", "task.fps_pool=280"]


def _cloud(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pointdata")
    rng = np.random.default_rng(0)
    base = root / "ShapeNet55-34"
    (base / "ShapeNet-55").mkdir(parents=True)
    (base / "shapenet_pc").mkdir()
    names = [f"0{k % 2}000000-m{k}.npy" for k in range(8)]
    (base / "ShapeNet-55" / "train.txt").write_text("\n".join(names) + "\n")
    for name in names:
        np.save(base / "shapenet_pc" / name, _cloud(rng, 400))
    for split, n in (("training", 8), ("test", 6)):
        path = root / "ScanObjectNN" / "main_split" / f"{split}_objectdataset_augmentedrot_scale75.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=np.stack([_cloud(rng, 300) for _ in range(n)]))
            f.create_dataset("label", data=np.arange(n) % 15)
    folder = root / "ModelNetFewshot" / "3way_4shot"
    folder.mkdir(parents=True)
    for fold in range(2):
        items = {s: [(_cloud(rng, 300), i % 3) for i in range(12 if s == "train" else 6)] for s in ("train", "test")}
        with open(folder / f"{fold}.pkl", "wb") as f:
            pickle.dump(items, f)
    modelnet = root / "ModelNet"
    modelnet.mkdir()
    classes = ["chair", "lamp", "plant"]
    (modelnet / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    for split, n in (("train", 9), ("test", 6)):  # the preprocessed .dat format, 300 points per cloud
        (modelnet / f"modelnet40_{split}.txt").write_text("".join(f"{classes[i % 3]}_{i:04d}\n" for i in range(n)))
        with open(modelnet / f"modelnet40_{split}_300pts_fps.dat", "wb") as f:
            pickle.dump([[_cloud(rng, 300) for _ in range(n)], [np.array([i % 3]) for i in range(n)]], f)
    return root


def _run(config: str, root: Path, *extra: str, sets: List[str]) -> int:
    return main(["--config", f"configs/pointcloud/{config}", "--exp-root", str(root), *extra, "--set", *sets])


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pretrained(data: Path, tmp_path_factory) -> Path:
    """last.pth of a 1-epoch tiny pretraining on the ShapeNet files."""
    exp = tmp_path_factory.mktemp("pretrain")
    shapenet = [f"dataset.train.data_path={data}/ShapeNet55-34/ShapeNet-55",
                f"dataset.train.pc_path={data}/ShapeNet55-34/shapenet_pc", "dataset.train.npoints=256",
                "model.decoder_depth=1"]
    assert _run("pretrain_shapenet.yaml", exp, sets=TINY + shapenet) == 0
    path = exp / "pretrain_shapenet" / "default" / "last.pth"
    assert path.exists()
    return path


@pytest.mark.slow
def test_pretrain_finetune_test_vote(data: Path, pretrained: Path, tmp_path: Path, capsys):
    exp = tmp_path / "exp"
    scan = [f"dataset.train.root={data}/ScanObjectNN", f"dataset.val.root={data}/ScanObjectNN"]
    assert _run("finetune_scan_hardest.yaml", exp, "--finetune", str(pretrained), sets=FINETUNE + scan) == 0
    out = capsys.readouterr().out
    assert "best_metric" in out
    best = exp / "finetune_scan_hardest" / "default" / "best.pth"
    # the finetuned encoder started from the pretrained one (same keys, tokeniser and encoder)
    weights, pre = extract_state_dict(load_checkpoint(best)), extract_state_dict(load_checkpoint(pretrained))
    assert any(k.startswith("encoder.blocks.blocks.0.") for k in weights)
    assert {k for k in pre if k.startswith(("tokenizer.", "encoder."))} <= set(weights)

    assert _run("finetune_scan_hardest.yaml", exp, "--test", sets=FINETUNE + scan) == 0
    test = _last_json(capsys)
    assert {"top1", "class_mean_acc"} <= set(test)
    assert _run("finetune_scan_hardest.yaml", exp, "--vote", sets=FINETUNE + scan) == 0
    vote = _last_json(capsys)
    assert vote["votes"] == 10 and 0 <= vote["top1"] <= 100


@pytest.mark.slow
def test_pretrain_then_linear_svm(data: Path, pretrained: Path, tmp_path: Path, capsys):
    """svm_modelnet.yaml loads the pretraining checkpoint whole and reports the SVM accuracy."""
    exp = tmp_path / "exp"
    modelnet = [f"dataset.{s}.{k}" for s in ("train", "test") for k in (f"data_path={data}/ModelNet", "npoints=300")]
    sets = TINY + modelnet + ["model.decoder_depth=1", "task.npoints=256"]
    assert _run("svm_modelnet.yaml", exp, "--finetune", str(pretrained), sets=sets) == 0
    result = _last_json(capsys)
    assert result["metric"] == "accuracy" and 0 <= result["best_metric"] <= 100
    run_dir = exp / "svm_modelnet" / "default"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in records if "accuracy" in r] == [result["best_metric"]]
    log_text = (run_dir / "log.txt").read_text()
    assert "loaded pretrained weights" in log_text and "missing keys" not in log_text


def test_pointmap_forward_features_is_mean_and_max_of_all_tokens():
    torch.manual_seed(0)
    model = pointmap_pretrain(trans_dim=48, encoder_dims=48, depth=2, num_group=16, group_size=8,
                              decoder_depth=1).eval()
    pts = torch.randn(3, 128, 3)
    with torch.no_grad():
        feats = model.forward_features(pts)
        tok = model.tokenizer(pts)
        x = model.encoder(tok.x, tok.pos, tok.coords)
    assert feats.shape == (3, 96) and x.shape == (3, 16, 48)  # all 16 groups encoded, no mask
    torch.testing.assert_close(feats, torch.cat([x.mean(1), x.amax(1)], dim=-1))


@pytest.mark.slow
def test_fewshot_way_and_shot_set_once(data: Path, tmp_path: Path, capsys):
    """fewshot.way / shot reach every dataset section, task.num_classes and model.num_classes."""
    fewshot = [f"dataset.train.data_path={data}/ModelNetFewshot", f"dataset.val.data_path={data}/ModelNetFewshot",
               "fewshot.folds=2", "fewshot.way=3", "fewshot.shot=4"]
    exp = tmp_path / "exp"
    assert _run("fewshot.yaml", exp, sets=FINETUNE + fewshot) == 0
    summary = _last_json(capsys)
    assert len(summary["per_fold"]) == 2 and (summary["way"], summary["shot"]) == (3, 4)
    fold_cfg = yaml.safe_load((exp / "fewshot" / "default" / "fold_1" / "config.yaml").read_text())
    for split in ("train", "val"):
        assert {k: fold_cfg["dataset"][split][k] for k in ("way", "shot", "fold")} == {"way": 3, "shot": 4, "fold": 1}
    assert fold_cfg["model"]["num_classes"] == 3 and fold_cfg["task"]["num_classes"] == 3


def test_vote_uses_one_fps_pool_and_averages_views():
    """vote() = mean of the logits of `votes` random subsets of one FPS pool (checked with a spy model)."""
    torch.manual_seed(0)
    task = PointClassifyTask({}, npoints=32, fps_pool=48, augment="rotate", votes=3, num_classes=5)
    model = PointMAPClassifier(trans_dim=48, encoder_dims=48, depth=3, num_group=8, group_size=4, num_classes=5).eval()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    pts, labels = torch.randn(2, 100, 3), torch.tensor([1, 3])
    loader = [(pts, labels)]
    metrics = task.vote(model, loader)
    assert len(seen) == 3 and all(p.shape == (2, 32, 3) for p, _ in seen)
    pool = task._pool(pts)
    norms = pool.norm(dim=-1)  # rotation about y keeps each point's norm: every view comes from the pool
    for p, _ in seen:
        assert torch.isin(p.norm(dim=-1).round(decimals=4), norms.round(decimals=4)).all()
    logits = torch.stack([o for _, o in seen]).mean(0)
    assert metrics["top1"] == 100 * (logits.argmax(-1) == labels).float().mean().item()


def test_point_task_settings_that_cannot_work_are_config_errors():
    with pytest.raises(ConfigError, match=r"task.votes=0: --vote averages the logits of that many views"):
        PointClassifyTask({}, votes=0)
    with pytest.raises(ConfigError, match=r"task.fps_pool=1000: .* task.npoints=1024 points .* at least 1024"):
        PointClassifyTask({}, npoints=1024, fps_pool=1000)
    model = {"NAME": "pointmap_classifier", "trans_dim": 48, "encoder_dims": 48, "depth": 3, "num_group": 16,
             "group_size": 8}
    task = PointClassifyTask(Config({"model": model}), npoints=12, fps_pool=12)
    with pytest.raises(ConfigError, match=r"task.npoints=12: the model takes 16 groups of 8 points .* at least 16"):
        task.build_model()
