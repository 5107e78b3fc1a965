"""Train, finetune, few-shot, test or vote: everything is read from one YAML config.

    python tools/train.py --config configs/pointcloud/finetune_scan_hardest.yaml --exp-name run1 \
        --finetune pretrain.pth --set optimizer.lr=5e-4 train.total_batch_size=32
    torchrun --nproc_per_node=8 tools/train.py --config ... --resume      # continue last.pth
    python tools/train.py --config ... --test [--ckpt best.pth] | --vote
    python tools/train.py --test --ckpt experiments/<config>/<name>  # the config.yaml saved there

The experiment folder is <exp-root>/<config stem>/<exp name>/ (exp-root: --exp-root, else
$MAP_EXP_ROOT, else ./experiments; the name stays inside it); a config.yaml saved in an experiment
folder stands for that folder. A run owns its folder while it runs (run.lock): a second run into it
is refused. A folder holding checkpoints is never overwritten: continue it with --resume, or pass
--overwrite to replace the files the earlier run wrote (others are kept). Prints the final metrics
as one JSON line. User errors end with one 'error: ...' line and exit code 2. Installed, this is
also the command `map-train`.
"""
from __future__ import annotations

import json
import sys
from typing import List, Optional

try:
    from map_core.engine.cli import train_command
except ModuleNotFoundError as err:  # a checkout that is not installed
    if err.name != "map_core":
        raise
    sys.exit("error: the map_core package is not installed; run `pip install -e .` in the repository root")


def main(argv: Optional[List[str]] = None) -> int:
    code, metrics = train_command(argv, __doc__)
    if metrics is not None:
        print(json.dumps(metrics, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
