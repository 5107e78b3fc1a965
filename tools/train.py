"""Train, finetune, few-shot, test or vote: everything is read from one YAML config.

    python tools/train.py --config configs/pointcloud/finetune_scan_hardest.yaml --exp-name run1 \
        --finetune pretrain.pth --set optimizer.lr=5e-4 train.total_batch_size=32
    torchrun --nproc_per_node=8 tools/train.py --config ... --resume      # continue last.pth
    python tools/train.py --config ... --test [--ckpt best.pth] | --vote
    python tools/train.py --test --ckpt experiments/<config>/<name>  # the config.yaml saved there

The experiment folder is <exp-root>/<config stem>/<exp name>/ (exp-root: --exp-root, else
$MAP_EXP_ROOT, else ./experiments); a config.yaml saved in an experiment folder stands for that
folder. A folder holding checkpoints is never overwritten: continue it with --resume, or pass
--overwrite to replace it. User errors end with one 'error: ...' line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from map_core.engine.schema import load_experiment  # noqa: E402
from map_core.engine.distributed import cleanup  # noqa: E402
from map_core.engine.experiment import is_experiment_dir, saved_config  # noqa: E402
from map_core.engine.run import RunOptions, run  # noqa: E402
from map_core.errors import ConfigError  # noqa: E402
from map_core.modalities import load_modalities  # noqa: E402
from tools.cli import USER_ERRORS, add_debug_flag, progress_factory, report_error, setup_console  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="experiment YAML (optional with --test / --vote --ckpt: the config.yaml saved there)")
    p.add_argument("--exp-name", default="default", help="experiment folder name")
    p.add_argument("--exp-root", default=None, help="root of experiment folders")
    p.add_argument("--finetune", default=None, help="pretrained checkpoint to start from")
    p.add_argument("--allow-partial-load", action="store_true",
                   help="accept a --finetune checkpoint that fills under half of the encoder")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", nargs="?", const="", default=None, help="checkpoint (default: last.pth)")
    start.add_argument("--overwrite", action="store_true", help="replace the checkpoints of an earlier run")
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
    return p.parse_args(argv)


def experiment_dir(args: argparse.Namespace) -> Path:
    config = Path(args.config)
    if config.name == "config.yaml" and is_experiment_dir(config.parent):
        return config.parent
    root = Path(args.exp_root or os.environ.get("MAP_EXP_ROOT") or "experiments")
    return root / config.stem / args.exp_name


def resolve_experiment(args: argparse.Namespace, mode: str) -> Tuple[Path, Path, Optional[str]]:
    """(config file, experiment folder, checkpoint for --test / --vote)."""
    if args.config is not None:
        ckpt = args.ckpt
        if ckpt and mode != "train" and Path(ckpt).is_dir():
            ckpt = str(Path(ckpt) / "best.pth")
        return Path(args.config), experiment_dir(args), ckpt
    if mode == "train" or not args.ckpt:
        raise ConfigError("--config is required (it may be left out only with --test / --vote and --ckpt, "
                          "which then use the config.yaml saved beside the checkpoint)")
    config, folder, ckpt = saved_config(args.ckpt, "best.pth")
    return config, folder, str(ckpt)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
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
        metrics = run(cfg, opts)
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    finally:
        cleanup()
    if main_rank:
        print(json.dumps(metrics, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
