"""Pictures of MAP models: masked input / reconstruction / ground truth, or predicted parts.

    python tools/visualize.py --ckpt experiments/demo/image_pretrain/demo --out recon.png [--num 6]
    python tools/visualize.py --config configs/demo/image_pretrain.yaml --ckpt official.pth --out recon.png

The picture is drawn by the modality of the config's model (``map_core.modalities``): images as rows
of images, point clouds as rows of 3D scatter plots (with open3d installed, also .ply files next to
the PNG), and for part segmentation (a dataset with ``category_parts``, e.g.
configs/demo/pointmap_partseg.yaml with a finetuned --ckpt) the predicted parts next to the true
ones. ``--ckpt`` is a checkpoint or an experiment folder (its last.pth); without ``--config`` the
config.yaml saved beside it is used. ``--split`` defaults to the first of val, test, train that the
config has. User errors end with one 'error: ...' line and exit code 2 (``--debug`` shows the
traceback).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from map_core.engine.checkpoint import load_checkpoint  # noqa: E402
from map_core.engine.experiment import config_hint, saved_config  # noqa: E402
from map_core.errors import ConfigError  # noqa: E402
from map_core.modalities import Draw, Modality, load_modalities, modality_of  # noqa: E402
from map_core.weights import CheckpointShapeError, load_weights  # noqa: E402
from tools.cli import USER_ERRORS, add_debug_flag, report_error  # noqa: E402


def drawer(model: torch.nn.Module, dataset, modality: Modality, where: str) -> Draw:
    """The modality's picture of ``model`` on ``dataset``; a ConfigError (prefixed by ``where``) says
    what the modality can draw when it has none for them."""
    draw = modality.visualizer(model, dataset) if modality.visualizer is not None else None
    if draw is None:
        raise ConfigError(f"{where} builds a {type(model).__name__}; visualize needs {modality.drawable}"
                          if modality.visualizer is not None else
                          f"{where}: the {modality.name} modality has no visualiser")
    return draw


def visualize(model, dataset, out: Path, num: int = 4, seed: int = 0, modality: Optional[Modality] = None) -> Path:
    """Draw ``num`` samples spread evenly over ``dataset`` with the model's modality (default: the
    one that defined the model's class) and save the figure to ``out``."""
    modality = modality or modality_of(model)
    draw = drawer(model, dataset, modality, f"the {modality.name} model")
    picks = torch.linspace(0, len(dataset) - 1, min(num, len(dataset))).round().long().tolist()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    draw(picks, out)
    return out


def load_all_weights(model: torch.nn.Module, path: Path, cfg) -> None:
    """All of ``model``'s weights from ``path`` (ours, or official names the model converts)."""
    state = load_checkpoint(path)
    hint = config_hint(state.get("config") if isinstance(state, dict) else None, cfg, "model",
                       "Without --config, the config.yaml saved beside the checkpoint is used.")
    result = load_weights(model, state, f"'{path}'", hint)
    if result.missing_keys:
        raise CheckpointShapeError(f"'{path}' lacks {len(result.missing_keys)} tensors of the config's model "
                                   f"(first: {result.missing_keys[0]}){hint}")


def pick_split(cfg, split: Optional[str]) -> str:
    """``split`` if the config has it, else the first of val, test, train it has."""
    present = list(cfg.dataset)
    if split is None:
        split = next((s for s in ("val", "test", "train") if s in present), None)
    if split not in present:
        raise ConfigError(f"--split {split}: the config has no dataset.{split} (it has: {', '.join(present) or 'none'})")
    return split


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="default: the config.yaml saved beside --ckpt")
    p.add_argument("--ckpt", required=True,
                   help="pretraining checkpoint (ours or official), a part segmentation one, or an experiment folder")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--num", type=int, default=4)
    p.add_argument("--split", default=None, help="dataset split (default: val, else test, else train)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    add_debug_flag(p)
    args = p.parse_args(argv)
    from map_core.engine.schema import load_experiment
    from map_core.engine.tasks import build_task

    try:
        load_modalities()
        if args.config is None:
            config, _, ckpt = saved_config(args.ckpt, "last.pth")
        else:
            config, ckpt = Path(args.config), Path(args.ckpt)
            ckpt = ckpt / "last.pth" if ckpt.is_dir() else ckpt
        cfg = load_experiment(config, args.set)
        task = build_task(cfg)
        model = task.build_model()
        dataset = task.build_dataset(pick_split(cfg, args.split))
        modality = modality_of(cfg.model.NAME)
        drawer(model, dataset, modality, f"{config}: model.NAME '{cfg.model.NAME}'")  # before loading
        load_all_weights(model, ckpt, cfg)
        print(visualize(model, dataset, Path(args.out), args.num, modality=modality))
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
