"""End to end through tools/train.py: MAP pretraining -> finetune from its checkpoint -> --test."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.train import main

MODEL = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, drop_path_rate=0.0)


def _image_folder(root: Path, per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("apple", "bus", "cat")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                base = np.zeros((40, 40, 3), np.uint8)
                base[..., c] = 200
                img = np.clip(base + rng.integers(0, 50, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")


def _config(path: Path, data: Path, pretrain: bool) -> Path:
    model = dict(MODEL, NAME="map_pretrain", decoder_dim=32, decoder_depth=1, decoder_heads=4) if pretrain \
        else dict(MODEL, NAME="map_classifier", num_classes=3, num_cls_tokens=4, cls_reduce=2)
    common = dict(NAME="ImageNet", root=str(data), input_size=32)
    cfg = {
        "task": {"NAME": "pretrain"} if pretrain else {"NAME": "classify", "num_classes": 3},
        "model": model,
        "dataset": {"train": dict(common, split="train", transform="pretrain" if pretrain else "finetune"),
                    "val": dict(common, split="val", transform="eval")},
        "optimizer": {"NAME": "adamw", "lr": 1.0e-3, "betas": [0.9, 0.95]},
        "scheduler": {"NAME": "cosine", "epochs": 1, "warmup_epochs": 0},
        "train": {"total_batch_size": 4, "num_workers": 0, "precision": "fp32", "log_every": 1},
        "runtime": {"device": "cpu"},
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.mark.slow
def test_pretrain_finetune_test(tmp_path, capsys):
    data = tmp_path / "data"
    _image_folder(data)
    root = tmp_path / "exp"
    pre_cfg = _config(tmp_path / "pre.yaml", data, pretrain=True)
    ft_cfg = _config(tmp_path / "ft.yaml", data, pretrain=False)

    assert main(["--config", str(pre_cfg), "--exp-root", str(root), "--exp-name", "p"]) == 0
    pre_dir = root / "pre" / "p"
    assert (pre_dir / "last.pth").is_file() and (pre_dir / "config.yaml").is_file()

    assert main(["--config", str(ft_cfg), "--exp-root", str(root), "--exp-name", "f",
                 "--finetune", str(pre_dir / "last.pth")]) == 0
    ft_dir = root / "ft" / "f"
    assert (ft_dir / "best.pth").is_file() and (ft_dir / "metrics.jsonl").is_file()
    log_text = (ft_dir / "log.txt").read_text()
    assert "dropping" in log_text and "pretraining-only" in log_text  # decoder dropped, encoder loaded

    capsys.readouterr()
    assert main(["--config", str(ft_cfg), "--exp-root", str(root), "--exp-name", "f", "--test"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["top1"] <= 100.0 and np.isfinite(metrics["loss"])


@pytest.mark.slow
def test_corrupt_image_counted_at_epoch_end(tmp_path):
    """A corrupt training file is skipped, then counted in the epoch record and named in log.txt."""
    data = tmp_path / "data"
    _image_folder(data, per_class=5)
    (data / "train" / "bus" / "broken.png").write_bytes(b"not a png")  # 16 files: one epoch reads all
    cfg = _config(tmp_path / "pre.yaml", data, pretrain=True)
    assert main(["--config", str(cfg), "--exp-root", str(tmp_path / "exp"), "--exp-name", "p"]) == 0
    run_dir = tmp_path / "exp" / "pre" / "p"
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    assert [r["skipped_images"] for r in records if r["type"] == "epoch"] == [1]
    warning = next(line for line in (run_dir / "log.txt").read_text().splitlines() if "files skipped" in line)
    assert "1 unreadable training files skipped" in warning and "broken.png" in warning
