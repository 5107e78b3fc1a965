"""The commands that several entry points run: a training run from command-line arguments
(``tools/train.py``, run in-process by ``tools/demo.py`` and the tests) and the picture of a
checkpoint (``tools/visualize.py``, the demo). The console side (error lines, bars) is
``map_core.engine.console``; the entry points print the results.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from map_core.engine.checkpoint import load_checkpoint
from map_core.engine.console import USER_ERRORS, add_debug_flag, progress_factory, report_error, setup_console
from map_core.engine.distributed import cleanup
from map_core.engine.experiment import config_hint, experiment_dir, experiment_lock, saved_config
from map_core.engine.run import RunOptions, run
from map_core.engine.schema import ExperimentConfig, load_experiment
from map_core.engine.tasks import build_task
from map_core.errors import ConfigError
from map_core.modalities import Draw, Modality, load_modalities, modality_of
from map_core.weights import CheckpointShapeError, load_weights


# ----------------------------------------------------------------------------- training
def train_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The arguments of ``tools/train.py``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="experiment YAML (optional with --test / --vote --ckpt: the config.yaml saved there)")
    p.add_argument("--exp-name", default="default", help="experiment folder name (inside the experiment root)")
    p.add_argument("--exp-root", default=None, help="root of experiment folders")
    p.add_argument("--finetune", default=None, help="pretrained checkpoint to start from")
    p.add_argument("--allow-partial-load", action="store_true",
                   help="accept a --finetune checkpoint that fills under half of the encoder")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", nargs="?", const="", default=None, help="checkpoint (default: last.pth)")
    start.add_argument("--overwrite", action="store_true",
                       help="replace the files an earlier run wrote in the experiment folder")
    p.add_argument("--allow-changed-config", action="store_true",
                   help="let --resume continue with config values that differ from the checkpoint's")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint or experiment folder for --test / --vote (default: best.pth)")
    p.add_argument("--test", action="store_true", help="evaluate only")
    p.add_argument("--vote", action="store_true", help="evaluate with the task's voting")
    p.add_argument("--seed", type=int, default=None, help="shortcut for --set train.seed=N")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. optimizer.lr=1e-3 model.depth=12")
    add_debug_flag(p)
    return p


def resolve_experiment(args: argparse.Namespace, mode: str) -> Tuple[Path, Path, Optional[str]]:
    """(config file, experiment folder, checkpoint for --test / --vote) of parsed train arguments."""
    if args.config is not None:
        ckpt = args.ckpt
        if ckpt and mode != "train" and Path(ckpt).is_dir():
            ckpt = str(Path(ckpt) / "best.pth")
        return Path(args.config), experiment_dir(args.config, args.exp_root, args.exp_name), ckpt
    if mode == "train" or not args.ckpt:
        raise ConfigError("--config is required (it may be left out only with --test / --vote and --ckpt, "
                          "which then use the config.yaml saved beside the checkpoint)")
    config, folder, ckpt = saved_config(args.ckpt, "best.pth")
    return config, folder, str(ckpt)


def train_command(argv: Optional[Sequence[str]] = None,
                  description: Optional[str] = None) -> Tuple[int, Optional[Dict[str, Any]]]:
    """Run ``tools/train.py`` with ``argv``: (exit code, final metrics on rank 0, else None).

    The experiment folder is locked (``map_core.engine.experiment.experiment_lock``) by rank 0 for
    the whole run. A user error is reported as one ``error:`` line, exit code 2.
    """
    args = train_parser(description).parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    bars = sys.stderr.isatty() and main_rank
    setup_console(bars)
    mode = "vote" if args.vote else "test" if args.test else "train"
    try:
        load_modalities()
        config, exp_dir, ckpt = resolve_experiment(args, mode)
        overrides = args.set + ([f"train.seed={args.seed}"] if args.seed is not None else [])
        cfg = load_experiment(config, overrides)
        opts = RunOptions(exp_dir=exp_dir, finetune=args.finetune, resume=args.resume, ckpt=ckpt, mode=mode,
                          progress=progress_factory(bars) if main_rank else None, overwrite=args.overwrite,
                          allow_partial_load=args.allow_partial_load, allow_changed_config=args.allow_changed_config)
        with experiment_lock(exp_dir) if main_rank else contextlib.nullcontext():
            metrics = run(cfg, opts)
    except USER_ERRORS as err:
        return report_error(err, args.debug), None
    finally:
        cleanup()
    return 0, metrics if main_rank else None


# ----------------------------------------------------------------------------- pictures
def drawer(model: torch.nn.Module, dataset: Any, modality: Modality, where: str) -> Draw:
    """The modality's picture of ``model`` on ``dataset``; a ConfigError (prefixed by ``where``) says
    what the modality can draw when it has none for them."""
    draw = modality.visualizer(model, dataset) if modality.visualizer is not None else None
    if draw is None:
        raise ConfigError(f"{where} builds a {type(model).__name__}; visualize needs {modality.drawable}"
                          if modality.visualizer is not None else
                          f"{where}: the {modality.name} modality has no visualiser")
    return draw


def draw_samples(model: torch.nn.Module, dataset: Any, out: Path, num: int = 4, seed: int = 0,
                 modality: Optional[Modality] = None) -> Path:
    """Draw ``num`` samples spread evenly over ``dataset`` with the model's modality (default: the
    one that defined the model's class) and save the figure to ``out``."""
    modality = modality or modality_of(model)
    draw = drawer(model, dataset, modality, f"the {modality.name} model")
    picks = torch.linspace(0, len(dataset) - 1, min(num, len(dataset))).round().long().tolist()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    draw(picks, out)
    return out


def load_all_weights(model: torch.nn.Module, path: Path, cfg: ExperimentConfig) -> None:
    """All of ``model``'s weights from ``path`` (ours, or official names the model converts)."""
    state = load_checkpoint(path)
    hint = config_hint(state.get("config") if isinstance(state, dict) else None, cfg, "model",
                       "Without --config, the config.yaml saved beside the checkpoint is used.")
    result = load_weights(model, state, f"'{path}'", hint)
    if result.missing_keys:
        raise CheckpointShapeError(f"'{path}' lacks {len(result.missing_keys)} tensors of the config's model "
                                   f"(first: {result.missing_keys[0]}){hint}")


def pick_split(cfg: ExperimentConfig, split: Optional[str]) -> str:
    """``split`` if the config has it, else the first of val, test, train it has."""
    present = list(cfg.dataset)
    if split is None:
        split = next((s for s in ("val", "test", "train") if s in present), None)
    if split not in present:
        raise ConfigError(f"--split {split}: the config has no dataset.{split} (it has: {', '.join(present) or 'none'})")
    return split


def render_checkpoint(config: Optional[str | Path], ckpt: str | Path, out: Path, overrides: Sequence[str] = (),
                      num: int = 4, split: Optional[str] = None) -> Path:
    """The picture of ``num`` samples of the config's ``split`` by the checkpoint's model, saved to
    ``out``. ``ckpt``: a checkpoint or an experiment folder (its last.pth); without ``config`` the
    config.yaml saved beside it is used. Every part is checked before the weights are read."""
    load_modalities()
    if config is None:
        config, _, ckpt = saved_config(ckpt, "last.pth")
    else:
        ckpt = Path(ckpt) / "last.pth" if Path(ckpt).is_dir() else Path(ckpt)
    cfg = load_experiment(config, list(overrides))
    task = build_task(cfg)
    model = task.build_model()
    dataset = task.build_dataset(pick_split(cfg, split))
    modality = modality_of(cfg.model.NAME)
    drawer(model, dataset, modality, f"{config}: model.NAME '{cfg.model.NAME}'")
    load_all_weights(model, Path(ckpt), cfg)
    return draw_samples(model, dataset, out, num, modality=modality)

