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
traceback). Installed, this is also the command `map-visualize`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

try:
    from map_core.engine.cli import render_checkpoint
    from map_core.engine.console import USER_ERRORS, add_debug_flag, positive_int, report_error
except ModuleNotFoundError as err:  # a checkout that is not installed
    if err.name != "map_core":
        raise
    sys.exit("error: the map_core package is not installed; run `pip install -e .` in the repository root")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="default: the config.yaml saved beside --ckpt")
    p.add_argument("--ckpt", required=True,
                   help="pretraining checkpoint (ours or official), a part segmentation one, or an experiment folder")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--num", type=positive_int, default=4, help="samples to draw")
    p.add_argument("--split", default=None, help="dataset split (default: val, else test, else train)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    add_debug_flag(p)
    args = p.parse_args(argv)
    try:
        print(render_checkpoint(args.config, args.ckpt, Path(args.out), args.set, args.num, args.split))
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
