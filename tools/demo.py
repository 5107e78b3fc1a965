"""The MAP demo: the whole pipeline on real data that ships inside scikit-learn, in minutes on a CPU.

Data: the 1,797 real 8x8 handwritten digits of ``sklearn.datasets.load_digits`` (10 classes),
turned into 32x32 images and into "3D digits" point clouds (see ``datasets/demo_digits.py``) and
written in the real on-disk formats (ImageNet folders, ShapeNet-55 npy lists, ScanObjectNN h5).

For each modality: MAP pretraining of a small hybrid model, finetuning from it, and the same
classifier trained from scratch with the same budget. Prints a table of test accuracies, writes it
to ``experiments/demo/results.md`` and saves reconstruction pictures next to it. Every step is an
ordinary ``tools/train.py`` run of a config under ``configs/demo/``. At these budgets pretraining
gives points a small gain and images none yet (5 epochs; 15 are needed): see the README and
``docs/ablation.md`` for the measurements over seeds.

    python tools/demo.py [--exp-root experiments/demo] [--data .cache/demo_digits] [--quick]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import train  # noqa: E402  (tools/train.py)

CONFIGS = ROOT / "configs" / "demo"
# modality -> (pretrain config, finetune config); the configs read .cache/demo_digits, and
# DATA_KEYS points them elsewhere when --data says so
MODALITIES = {
    "point cloud (PointMAP)": ("pointmap_pretrain.yaml", "pointmap_finetune.yaml"),
    "image (MAP)": ("image_pretrain.yaml", "image_finetune.yaml"),
}
DATA_KEYS = {
    "pointmap_pretrain.yaml": {"dataset.train.data_path": "shapenet_list", "dataset.train.pc_path": "shapenet_pc",
                               "dataset.val.data_path": "shapenet_list", "dataset.val.pc_path": "shapenet_pc"},
    "pointmap_finetune.yaml": {"dataset.train.root": "scanobjectnn", "dataset.val.root": "scanobjectnn"},
    "image_pretrain.yaml": {"dataset.train.root": "images", "dataset.val.root": "images"},
    "image_finetune.yaml": {"dataset.train.root": "images", "dataset.val.root": "images"},
}
# --quick: the same pipeline on a sliver of the data, for the test suite
QUICK = ["scheduler.epochs=1", "scheduler.warmup_epochs=0", "train.max_steps_per_epoch=2",
         "train.total_batch_size=16"]


def load_demo_builder():
    """``datasets/`` is not a package (it would shadow Hugging Face ``datasets``): load by path."""
    spec = importlib.util.spec_from_file_location("demo_digits", ROOT / "datasets" / "demo_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_run(config: Path, exp_root: Path, exp_name: str, extra: List[str]) -> Dict:
    """One ``tools/train.py`` run in this process; returns its metrics (raises on failure)."""
    # each demo recomputes its runs: replace those of an earlier demo in the same --exp-root
    argv = ["--config", str(config), "--exp-root", str(exp_root), "--exp-name", exp_name, "--overwrite"] + extra
    print(f"\n$ python tools/train.py {' '.join(argv)}", flush=True)
    code = train.main(argv)
    if code != 0:
        raise SystemExit(f"demo step failed: tools/train.py {' '.join(argv)}")
    metrics_file = exp_root / config.stem / exp_name / "metrics.jsonl"
    epochs = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return [e for e in epochs if e.get("type") == "epoch"][-1]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-root", default="experiments/demo")
    p.add_argument("--data", default=".cache/demo_digits", help="where the demo data is built")
    p.add_argument("--quick", action="store_true", help="a few steps of each run (for tests)")
    p.add_argument("--limit-per-class", type=int, default=None, help="build a smaller data set")
    args = p.parse_args(argv)
    start = time.time()
    exp_root = Path(args.exp_root)
    data = load_demo_builder().build_demo_data(args.data, limit_per_class=args.limit_per_class)
    print(f"demo data: {data['root']}")

    def config_args(name: str) -> List[str]:
        sets = [f"{key}={data[part]}" for key, part in DATA_KEYS[name].items()]
        return ["--set", *sets, *(QUICK if args.quick else [])]

    rows = []
    for name, (pre_cfg, ft_cfg) in MODALITIES.items():
        train_run(CONFIGS / pre_cfg, exp_root, "pretrain", config_args(pre_cfg))
        ckpt = exp_root / Path(pre_cfg).stem / "pretrain" / "last.pth"
        finetune = config_args(ft_cfg)
        pretrained = train_run(CONFIGS / ft_cfg, exp_root, "from_pretrained", finetune + ["--finetune", str(ckpt)])
        scratch = train_run(CONFIGS / ft_cfg, exp_root, "from_scratch", finetune)
        rows.append((name, scratch["top1"], pretrained["top1"]))
        picture = exp_root / f"reconstruction_{pre_cfg.split('_')[0]}.png"
        render(CONFIGS / pre_cfg, ckpt, picture, config_args(pre_cfg)[1:])
        print(f"saved {picture}")

    minutes = (time.time() - start) / 60
    table = ["| modality | scratch | MAP-pretrained |", "| --- | --- | --- |"]
    table += [f"| {n} | {s:.1f}% | {m:.1f}% |" for n, s, m in rows]
    text = "\n".join(table) + f"\n\nTest accuracy on the 450 held-out digits; {minutes:.1f} minutes in all.\n"
    (exp_root / "results.md").write_text(text)
    print("\n" + text)
    return 0


def render(config: Path, ckpt: Path, out: Path, overrides: List[str]) -> None:
    """Reconstruction picture of a few test samples with the pretrained model."""
    import visualize  # tools/visualize.py
    from map_core.engine.schema import load_experiment
    from map_core.engine.checkpoint import load_checkpoint
    from map_core.engine.tasks import build_task
    from map_core.weights import extract_state_dict

    task = build_task(load_experiment(str(config), overrides))
    model = task.build_model()
    model.load_state_dict(extract_state_dict(load_checkpoint(ckpt)))
    visualize.visualize(model, task.build_dataset("val"), out, num=4)


if __name__ == "__main__":
    sys.exit(main())
