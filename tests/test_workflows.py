"""Nothing lost, nothing silent: one test per way a careful user lost work or was misled (issue 10).

Each test repeats the user's command on tiny data in the real formats and checks the outcome:
experiment folders are not overwritten, a finetune that loads nothing is refused, bad files are
named, few-shot resumes past a killed fold, user errors are one 'error:' line with exit code 2,
--test / --vote / visualize find the saved config, progress reaches a log, check_data agrees with
training, and a resumed run has no duplicate steps.
"""
import importlib.util
import io
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import List

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import tests.engine_toy as toy
from map_core.engine.checkpoint import atomic_save, load_finetune_weights
from map_core.registry import MODELS
from map_core.weights import PartialLoadError
from map_core.engine import cli, console
from tests.test_engine import TOY_CONFIG as TOY
from tools import benchmark, visualize
from tools.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
POINTS = ["model.trans_dim=48", "model.encoder_dims=48", "model.depth=3", "model.num_group=16",
          "model.group_size=8", "train.num_workers=0", "train.total_batch_size=4",
          "scheduler.epochs=1", "scheduler.warmup_epochs=0", "runtime.device=cpu"]
IMAGE_MODEL = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, decoder_dim=32,
                   decoder_depth=1, decoder_heads=4)
IMAGE_CLASSIFIER = dict(NAME="map_classifier", img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4,
                        num_cls_tokens=2, num_classes=2)


@pytest.fixture
def toy_config(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    return path


def run_train(config: Path, root: Path, *extra: str) -> int:
    return train_main(["--config", str(config), "--exp-root", str(root), *extra])


def rows(exp: Path) -> List[dict]:
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]


def one_error_line(capsys) -> str:
    """stderr of a failed command: one 'error: ...' first line and no traceback."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def cloud(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, 3)).astype(np.float32)


def write_scan(root: Path, clouds: int = 6, points: int = 300, labels=None) -> Path:
    """The hardest-variant train and test files of ScanObjectNN; returns the train file."""
    rng = np.random.default_rng(0)
    for split in ("training", "test"):
        path = root / "ScanObjectNN" / "main_split" / f"{split}_objectdataset_augmentedrot_scale75.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=np.stack([cloud(rng, points) for _ in range(clouds)]))
            f.create_dataset("label", data=np.arange(clouds) % 15 if labels is None else labels)
    return root / "ScanObjectNN" / "main_split" / "training_objectdataset_augmentedrot_scale75.h5"


def scan_sets(root: Path) -> List[str]:
    return POINTS + ["task.npoints=256", "task.fps_pool=280",
                     f"dataset.train.root={root}/ScanObjectNN", f"dataset.val.root={root}/ScanObjectNN"]


def write_shapenet(root: Path, n: int = 4) -> List[str]:
    """ShapeNet-55 lists and clouds; returns the --set items pointing the pretraining config at them."""
    rng = np.random.default_rng(1)
    base = root / "ShapeNet55-34"
    (base / "ShapeNet-55").mkdir(parents=True)
    (base / "shapenet_pc").mkdir()
    names = [f"0{k % 2}000000-m{k}.npy" for k in range(n)]
    for split in ("train", "test"):
        (base / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(names) + "\n")
    for name in names:
        np.save(base / "shapenet_pc" / name, cloud(rng, 1100))
    return [f"dataset.train.data_path={base}/ShapeNet-55", f"dataset.train.pc_path={base}/shapenet_pc",
            "dataset.train.npoints=256"]


def image_folder(root: Path, splits=("train", "val"), per_class: int = 2) -> Path:
    rng = np.random.default_rng(2)
    for split in splits:
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def image_config(path: Path, data: Path, model: dict) -> Path:
    """A tiny ImageNet-folder experiment (pretraining task) with the model section ``model``."""
    cfg = {"model": model, "task": {"NAME": "pretrain"},
           "dataset": {s: {"NAME": "ImageNet", "root": str(data), "split": s, "input_size": 16, "crop_pct": 1.0}
                       for s in ("train", "val")},
           "scheduler": {"epochs": 1, "warmup_epochs": 0},
           "train": {"total_batch_size": 4, "num_workers": 0}, "runtime": {"device": "cpu"}}
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


# ------------------------------------------------------------------ 1. runs overwrite each other

def test_rerun_into_existing_experiment_is_refused(toy_config: Path, tmp_path: Path, capsys) -> None:
    root, exp = tmp_path / "exp", tmp_path / "exp" / "toy" / "default"
    assert run_train(toy_config, root) == 0
    saved = {name: (exp / name).read_bytes() for name in ("best.pth", "last.pth", "config.yaml", "metrics.jsonl")}
    tb_files = sorted((exp / "tb").iterdir())
    capsys.readouterr()
    assert run_train(toy_config, root, "--set", "optimizer.lr=0.5") == 2
    err = one_error_line(capsys)
    assert str(exp) in err and "--resume" in err and "--exp-name" in err
    assert {name: (exp / name).read_bytes() for name in saved} == saved  # byte-identical
    assert sorted((exp / "tb").iterdir()) == tb_files
    assert run_train(toy_config, root, "--overwrite") == 0  # explicit: the earlier run is replaced
    assert [r["step"] for r in rows(exp) if r["type"] == "train"] == list(range(1, 9))
    assert len(list((exp / "tb").iterdir())) == 1
    # a linear SVM saves no checkpoint: its result row is what a second run would bury
    svm = tmp_path / "svm.yaml"
    svm.write_text(TOY.replace("toy_classify, num_classes: 4", "linear_svm").replace("val:", "test:"))
    assert run_train(svm, root) == 0
    result = (root / "svm" / "default" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert run_train(svm, root, "--set", "task.C=0.5") == 2
    assert "svm/default" in one_error_line(capsys)
    assert (root / "svm" / "default" / "metrics.jsonl").read_bytes() == result


# ------------------------------------------------------------------ 2. --finetune with nothing matching

def test_finetune_with_nothing_matching_is_refused(toy_config: Path, tmp_path: Path, capsys) -> None:
    weights = toy.ToyMLP().state_dict()
    unknown, wrapped = tmp_path / "unknown.pth", tmp_path / "wrapped.pth"
    torch.save({"model": {"net." + k: v for k, v in weights.items()}}, unknown)
    torch.save({"model": {"backbone." + k: v for k, v in weights.items()}}, wrapped)
    root = tmp_path / "exp"
    assert run_train(toy_config, root, "--finetune", str(unknown)) == 2
    err = one_error_line(capsys)
    assert str(unknown) in err and "0 of 5 model tensors" in err and "net. (5)" in err and "fc1. (2)" in err
    assert not (root / "toy" / "default" / "last.pth").exists()
    assert run_train(toy_config, root, "--finetune", str(unknown), "--allow-partial-load") == 0  # deliberate
    assert run_train(toy_config, root, "--exp-name", "wrapped", "--finetune", str(wrapped)) == 0
    log_text = (root / "toy" / "wrapped" / "log.txt").read_text()
    assert "loaded pretrained weights from" in log_text and "5 of 5 model tensors" in log_text
    # an image checkpoint into the point classifier fills none of its encoder
    import image  # noqa: F401
    import pointcloud  # noqa: F401

    image_ckpt = tmp_path / "image.pth"
    atomic_save({"model": MODELS.get("map_pretrain")(**IMAGE_MODEL).state_dict()}, image_ckpt)
    points = MODELS.get("pointmap_classifier")(trans_dim=32, depth=3, num_heads=4, num_group=8, group_size=4,
                                               encoder_dims=32, pointnet_width=16)
    with pytest.raises(PartialLoadError, match=r"encoder: 0 of \d+.*tokenizer\..*cls_head_finetune\."):
        load_finetune_weights(points, image_ckpt)


# ------------------------------------------------------------------ 3. bad files are named

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _modelnet(root: Path, dat: bytes) -> List[str]:
    base = root / "ModelNet"
    base.mkdir(parents=True)
    (base / "modelnet40_shape_names.txt").write_text("chair\nlamp\n")
    for split in ("train", "test"):
        (base / f"modelnet40_{split}.txt").write_text("chair_0001\nlamp_0002\n")
        (base / f"modelnet40_{split}_300pts_fps.dat").write_bytes(dat)
    return [f"dataset.{s}.{k}" for s in ("train", "val") for k in (f"data_path={base}", "npoints=300")]


@pytest.mark.parametrize("case", ["truncated_h5", "empty_h5", "label_20_of_15", "1000_of_2048_points",
                                  "empty_dat", "truncated_dat"])
def test_bad_files_named_with_exit_code_2(case: str, tmp_path: Path, capsys) -> None:
    root, data = tmp_path / "exp", tmp_path / "data"
    config, sets = "finetune_scan_hardest.yaml", scan_sets(data)
    if case.endswith("h5") or case.startswith(("label", "1000")):
        bad = write_scan(data, labels=np.array([0, 1, 20, 3, 4, 5]) if case.startswith("label") else None,
                         points=1000 if case.startswith("1000") else 300)
        if case == "1000_of_2048_points":
            sets = [s for s in sets if not s.startswith(("task.npoints", "task.fps_pool"))]  # the config's 2048
        elif case == "truncated_h5":
            _truncate(bad)
        elif case == "empty_h5":
            bad.write_bytes(b"")
    else:
        good = pickle.dumps([[cloud(np.random.default_rng(3), 300)] * 2, [np.array([0]), np.array([1])]])
        config, sets = "finetune_modelnet.yaml", POINTS + _modelnet(data, b"" if case == "empty_dat" else good)
        bad = data / "ModelNet" / "modelnet40_train_300pts_fps.dat"
        if case == "truncated_dat":
            _truncate(bad)
    assert train_main(["--config", f"configs/pointcloud/{config}", "--exp-root", str(root), "--set", *sets]) == 2
    err = one_error_line(capsys)
    assert str(bad) in err
    expected = {"label_20_of_15": "label 20 at index 2 is outside [0, 15)",
                "1000_of_2048_points": "1000 points, fewer than the 2048 that task.npoints asks for"}
    assert expected.get(case, "") in err


# ------------------------------------------------------------------ 4. few-shot resumes past a killed fold

def test_fewshot_resume_after_kill_in_later_fold(toy_config: Path, tmp_path: Path, capsys) -> None:
    fewshot = tmp_path / "fs.yaml"
    fewshot.write_text(TOY + "fewshot: {way: 4, shot: 2, folds: 3}\n")
    root, exp = tmp_path / "exp", tmp_path / "exp" / "fs" / "default"
    assert run_train(fewshot, root, "--exp-name", "uninterrupted") == 0
    truth = json.loads((root / "fs" / "uninterrupted" / "fewshot_summary.json").read_text())
    # killed in fold 1 before its first checkpoint (fold 0 finished)
    assert run_train(fewshot, root, "--set", "dataset.train.crash_in_fold=1") == 2
    assert (exp / "fold_0" / "last.pth").exists() and not (exp / "fold_1" / "last.pth").exists()
    fold0 = [(exp / "fold_0" / name).read_bytes() for name in ("last.pth", "log.txt")]
    assert run_train(fewshot, root) == 2  # starting again would overwrite fold 0
    assert run_train(fewshot, root, "--resume") == 0
    assert [(exp / "fold_0" / name).read_bytes() for name in ("last.pth", "log.txt")] == fold0  # skipped
    summary = json.loads((exp / "fewshot_summary.json").read_text())
    assert summary["per_fold"] == truth["per_fold"] and len(summary["per_fold"]) == 3
    # killed inside a fold after its first checkpoint: resume continues that fold exactly
    assert run_train(fewshot, root, "--exp-name", "late", "--set", "task.nan_at_step=6") == 2
    assert run_train(fewshot, root, "--exp-name", "late", "--resume", "--allow-changed-config") == 0
    late = json.loads((root / "fs" / "late" / "fewshot_summary.json").read_text())
    assert late["per_fold"] == truth["per_fold"]


# ------------------------------------------------------------------ 5. one 'error:' line, exit code 2

def _evil_fewshot(data: Path, target: Path) -> List[str]:
    folder = data / "ModelNetFewshot" / "5way_10shot"
    folder.mkdir(parents=True)
    (folder / "0.pkl").write_bytes(pickle.dumps({"train": [(Exploit(target), 0)]}))
    return [f"dataset.{s}.data_path={data}/ModelNetFewshot" for s in ("train", "val")] + ["fewshot.folds=1"]


class Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_user_errors_are_one_line(toy_config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    root, data = tmp_path / "exp", tmp_path / "data"
    target = tmp_path / "PWNED"
    pretrain = dict(IMAGE_MODEL, NAME="map_pretrain")
    images = image_folder(data / "img")
    cases = [  # (argv of tools/train.py, text the message must hold)
        (["--config", "configs/pointcloud/fewshot.yaml", "--set", *POINTS, *_evil_fewshot(data, target)],
         "refused to load global"),
        (["--config", str(image_config(tmp_path / "a.yaml", tmp_path / "nowhere", pretrain))],
         "nowhere' does not exist"),
        (["--config", str(image_config(tmp_path / "b.yaml", images, dict(pretrain, num_heads=5)))],
         "not divisible by num_heads 5"),
        (["--config", str(image_config(tmp_path / "c.yaml", images, dict(pretrain, img_size=18)))],
         "not divisible by patch_size 4"),
        (["--config", "configs/pointcloud/pretrain_shapenet.yaml", "--set", *POINTS, *write_shapenet(data),
          "model.num_group=20", "model.decoder_depth=1"], "num_group to be a perfect square"),
        (["--config", str(toy_config), "--set", "train.total_batch_size=0"],
         "'train.total_batch_size' (set in command line) must be >= 1, got 0"),
        (["--config", "configs/pointcloud/finetune_scan_hardest.yaml", "--set", *POINTS, "task.npoints=300"],
         "set task.fps_pool"),
    ]
    for argv, text in cases:
        assert train_main([*argv, "--exp-root", str(root)]) == 2, argv
        assert text in one_error_line(capsys), argv
    assert not target.exists()
    # --resume after changing the model size or the optimizer
    assert run_train(toy_config, root, "--exp-name", "r", "--set", "task.nan_at_step=6") == 2
    capsys.readouterr()
    for change, text in (("model.hidden=8", "model.hidden: <unset> -> 8"), ("optimizer.NAME=sgd", "'adamw'")):
        assert run_train(toy_config, root, "--exp-name", "r", "--resume", "--set", change) == 2
        assert text in one_error_line(capsys)
    # all validation images unreadable, found by --test
    for path in (data / "img" / "val").rglob("*.png"):
        path.write_bytes(b"not an image")
    ckpt = tmp_path / "image.pth"
    atomic_save({"model": MODELS.get("map_pretrain")(**IMAGE_MODEL).state_dict()}, ckpt)
    assert train_main(["--config", str(tmp_path / "b.yaml"), "--exp-root", str(root), "--test", "--ckpt", str(ckpt),
                       "--set", "model.num_heads=4"]) == 2
    assert "no readable image" in one_error_line(capsys)
    # the other tools: a classifier config or a wrong-size checkpoint in visualize, shapes in benchmark
    classifier = image_config(tmp_path / "cls.yaml", images, IMAGE_CLASSIFIER)
    vis = ["--ckpt", str(ckpt), "--out", str(tmp_path / "x.png"), "--split", "train"]
    assert visualize.main(["--config", str(classifier), *vis]) == 2
    assert "visualize needs a MAP pretraining model" in one_error_line(capsys)
    assert visualize.main(["--config", str(tmp_path / "b.yaml"), *vis, "--set", "model.num_heads=4",
                           "model.embed_dim=16", "model.decoder_dim=16"]) == 2
    assert "shape mismatch loading" in one_error_line(capsys)
    assert benchmark.main(["--model", "map_pretrain", "--input", "image:16", "--set", "embed_dim=32",
                           "num_heads=5"]) == 2
    assert "num_heads 5" in one_error_line(capsys)
    # --debug shows the traceback; a program bug keeps its traceback (it is not caught)
    assert run_train(toy_config, root, "--set", "train.total_batch_size=0", "--debug") == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setattr(cli, "run", lambda cfg, opts: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_train(toy_config, root, "--exp-name", "bug")


# ------------------------------------------------------------------ 6. --test / --vote use the saved config

def test_test_and_vote_use_saved_config(toy_config: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "exp"
    assert run_train(toy_config, root, "--set", "model.hidden=8", "scheduler.epochs=1") == 0
    exp = root / "toy" / "default"
    capsys.readouterr()
    assert train_main(["--test", "--ckpt", str(exp)]) == 0  # no --config: exp/config.yaml
    assert "top1" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert train_main(["--vote", "--ckpt", str(exp / "best.pth")]) == 2  # weights loaded, then the task says:
    assert "does not support --vote" in one_error_line(capsys)
    assert train_main(["--config", str(exp / "config.yaml"), "--exp-root", str(root), "--test"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["toy"]  # no stray experiments/config/default
    assert [r["type"] for r in rows(exp)].count("test") == 2
    capsys.readouterr()
    assert run_train(toy_config, root, "--test") == 2  # the original config lacks the --set: say why
    assert "model.hidden: 8 -> <unset>" in one_error_line(capsys).splitlines()[0]


# ------------------------------------------------------------------ 7. visualize's default split

def test_visualize_default_split_on_pretrain_config(tmp_path: Path) -> None:
    import pointcloud  # noqa: F401

    sets = [s for s in POINTS if s.startswith("model.")] + write_shapenet(tmp_path / "data") + ["model.decoder_depth=1"]
    model = MODELS.get("pointmap_pretrain")(trans_dim=48, encoder_dims=48, depth=3, num_group=16, group_size=8,
                                            decoder_depth=1)
    atomic_save({"model": model.state_dict()}, tmp_path / "last.pth")
    out = tmp_path / "recon.png"
    assert visualize.main(["--config", "configs/pointcloud/pretrain_shapenet.yaml", "--ckpt",
                           str(tmp_path / "last.pth"), "--out", str(out), "--num", "1", "--set", *sets]) == 0
    assert out.stat().st_size > 1000


# ------------------------------------------------------------------ 8. progress everywhere, no collisions

def test_progress_lines_without_a_terminal(toy_config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(console.PROGRESS_SECONDS_ENV, "0")
    root = tmp_path / "exp"
    assert run_train(toy_config, root) == 0
    out = capsys.readouterr().out
    assert "train: 100% 8/8 [" in out and "<00:00" in out and "loss=" in out  # count, elapsed<ETA, loss
    assert "evaluate: 100% 2/2" in out
    assert "epoch 1 step" not in out  # per-step lines stay in log.txt
    assert "eta " in (root / "toy" / "default" / "log.txt").read_text()
    svm = tmp_path / "svm.yaml"
    svm.write_text(TOY.replace("toy_classify, num_classes: 4", "linear_svm").replace("val:", "test:"))
    assert run_train(svm, root) == 0
    assert "features: 100% 4/4" in capsys.readouterr().out
    fewshot = tmp_path / "fs.yaml"
    fewshot.write_text(TOY + "fewshot: {way: 4, shot: 2, folds: 2}\n")
    assert run_train(fewshot, root, "--set", "scheduler.epochs=1") == 0
    out = capsys.readouterr().out
    assert out.count("fewshot folds: 100% 2/2") == 1  # the last count once, not again at the end


def test_vote_reports_progress_and_log_lines_do_not_collide_with_bars(monkeypatch) -> None:
    import pointcloud  # noqa: F401
    from pointcloud.tasks import PointClassifyTask

    seen = []

    class Recorder:
        def __init__(self, total: int, desc: str, initial: int = 0):
            seen.append([desc, total, 0])

        def update(self, n: int = 1, postfix=None) -> None:
            seen[-1][2] += n

        def close(self) -> None:
            pass

    task = PointClassifyTask({}, npoints=32, fps_pool=48, votes=2, num_classes=5)
    task.progress = Recorder
    model = MODELS.get("pointmap_classifier")(trans_dim=32, encoder_dims=32, depth=3, num_heads=4, num_group=8,
                                              group_size=4, num_classes=5, pointnet_width=16).eval()
    task.vote(model, [(torch.randn(2, 64, 3), torch.tensor([1, 3]))] * 3)
    assert seen == [["vote", 3, 3]]
    # on a terminal, log lines go through tqdm.write: the bar is cleared, the line stands alone
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = console.TqdmProgress(10, "train")
    bar.update(3, {"loss": "0.5"})
    handler = console.BarSafeHandler(stream)
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "epoch 1: top1 50.0", None, None))
    bar.close()
    assert "epoch 1: top1 50.0" in stream.getvalue().replace("\r", "\n").splitlines()


# ------------------------------------------------------------------ 9. check_data accepts what training accepts

def test_check_data_rejects_what_training_rejects(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    small = write_scan(data, points=1000)
    sets = write_shapenet(data)
    bad = data / "ShapeNet55-34" / "shapenet_pc" / "01000000-m1.npy"
    nan = np.load(bad)
    nan[7, 2] = np.nan
    np.save(bad, nan)

    spec = importlib.util.spec_from_file_location("check_data", ROOT / "datasets" / "check_data.py")
    check_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_data)
    capsys.readouterr()
    assert check_data.main(["--root", str(data), "--only", "scanobjectnn"]) == 1
    assert f"{small}, cloud 0: 1000 points, fewer than the 2048" in capsys.readouterr().out
    assert check_data.main(["--root", str(data), "--only", "shapenet"]) == 1
    assert f"{bad}: non-finite" in capsys.readouterr().out
    # training refuses the same files
    root = tmp_path / "exp"
    scan_cfg = [s for s in scan_sets(data) if not s.startswith(("task.npoints", "task.fps_pool"))]
    assert train_main(["--config", "configs/pointcloud/finetune_scan_hardest.yaml", "--exp-root", str(root),
                       "--set", *scan_cfg]) == 2
    assert str(small) in one_error_line(capsys)
    assert train_main(["--config", "configs/pointcloud/pretrain_shapenet.yaml", "--exp-root", str(root),
                       "--set", *POINTS, *sets, "model.decoder_depth=1", "train.max_steps_per_epoch=1"]) == 2
    assert f"{bad}: non-finite" in one_error_line(capsys)


# ------------------------------------------------------------------ 10. no duplicate rows after resume

def test_resume_leaves_no_duplicate_steps(toy_config: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, exp = tmp_path / "exp", tmp_path / "exp" / "toy" / "default"
    assert run_train(toy_config, root, "--set", "task.nan_at_step=6") == 2  # dies after logging step 5
    assert [r["step"] for r in rows(exp) if r["type"] == "train"] == [1, 2, 3, 4, 5]
    assert run_train(toy_config, root, "--resume", "--allow-changed-config") == 0  # from step 4 (end of epoch 1)
    assert [r["step"] for r in rows(exp) if r["type"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in rows(exp) if r["type"] == "epoch"] == [4, 8]
    events = EventAccumulator(str(exp / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
