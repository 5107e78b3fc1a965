"""Pictures of MAP reconstructions: masked input / reconstruction / ground truth.

    python tools/visualize.py --ckpt experiments/demo/image_pretrain/demo --out recon.png [--num 6]
    python tools/visualize.py --config configs/demo/image_pretrain.yaml --ckpt official.pth --out recon.png

Works for image MAP models (rows of images) and PointMAP models (rows of 3D scatter plots); the
config's model and dataset sections say which. ``--ckpt`` is a checkpoint or an experiment folder
(its last.pth); without ``--config`` the config.yaml saved beside it is used. ``--split`` defaults
to the first of val, test, train that the config has. With open3d installed, point
reconstructions are also written as .ply files next to the PNG. For part segmentation (a dataset
with ``category_parts``, e.g. configs/demo/pointmap_partseg.yaml with a finetuned --ckpt), each row
shows the predicted parts next to the true ones. User errors end with one 'error: ...' line and
exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from map_core.engine.checkpoint import extract_state_dict, load_checkpoint  # noqa: E402
from map_core.engine.experiment import config_hint, saved_config  # noqa: E402
from map_core.errors import ConfigError  # noqa: E402
from map_core.masking import gather_tokens, mask_to_indices  # noqa: E402
from map_core.pretrain import MAPPretrainer  # noqa: E402
from map_core.registry import accepted_keys  # noqa: E402
from map_core.weights import CheckpointShapeError, check_shapes  # noqa: E402
from tools.cli import USER_ERRORS, add_debug_flag, report_error  # noqa: E402


@torch.no_grad()
def image_panels(model, imgs: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 mask: Optional[torch.Tensor] = None) -> List[np.ndarray]:
    """For each image: [masked input, reconstruction (visible + predicted), original] as HxWx3.

    imgs: (B, 3, H, W) normalised with mean/std. Predicted patches are in normalised-pixel units,
    so they are mapped back with each true patch's mean and variance (as MAE's visualisation).
    """
    model.eval()
    _, pred, mask = model(imgs, mask)
    target = model.patchify(imgs)
    t_mean, t_var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    pred = pred * (t_var + 1e-6).sqrt() + t_mean
    m = mask[..., None].to(pred.dtype)
    grey = torch.zeros_like(target)  # 0 in normalised units is the dataset mean colour
    masked_in = model.unpatchify(target * (1 - m) + grey * m)
    recon = model.unpatchify(target * (1 - m) + pred * m)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    to_img = lambda x: (x.cpu() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return [np.stack(p) for p in zip(to_img(masked_in), to_img(recon), to_img(imgs))]


@torch.no_grad()
def point_panels(model, pts: torch.Tensor, mask: Optional[torch.Tensor] = None
                 ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each cloud: (visible points, visible + predicted masked points, ground-truth groups)."""
    model.eval()
    tok = model.tokenizer(pts)
    _, pred, mask = model(pts, mask)
    keep, masked = mask_to_indices(mask)
    centre = tok.coords
    groups = tok.target + centre.unsqueeze(2)  # (B, G, K, 3) absolute
    k = groups.shape[2]
    rebuilt = pred.reshape(*pred.shape[:2], k, 3) + centre.unsqueeze(2)
    out = []
    for b in range(pts.shape[0]):
        visible = gather_tokens(groups[b:b + 1], keep[b:b + 1]).reshape(-1, 3)
        guess = gather_tokens(rebuilt[b:b + 1], masked[b:b + 1]).reshape(-1, 3)
        out.append((visible.cpu().numpy(), torch.cat([visible, guess]).cpu().numpy(),
                    groups[b].reshape(-1, 3).cpu().numpy()))
    return out


def save_image_figure(panels: List[np.ndarray], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(6, 2 * len(panels)), squeeze=False)
    for row, triple in zip(axes, panels):
        for ax, img, title in zip(row, triple, ("masked input", "reconstruction", "ground truth")):
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_point_figure(panels, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 3 * len(panels)))
    titles = ("visible groups", "reconstruction", "ground truth")
    for r, triple in enumerate(panels):
        for c, (cloud, title) in enumerate(zip(triple, titles)):
            ax = fig.add_subplot(len(panels), 3, 3 * r + c + 1, projection="3d")
            # y is up in ShapeNet / ScanObjectNN conventions
            ax.scatter(cloud[:, 0], cloud[:, 2], cloud[:, 1], s=1, c=cloud[:, 1], cmap="viridis")
            ax.view_init(elev=15, azim=-70)
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    try:
        import open3d as o3d
    except ImportError:
        print("open3d is not installed (pip install -e '.[vis]'): no .ply files written")
        return
    for r, triple in enumerate(panels):
        for cloud, name in zip(triple, ("visible", "recon", "gt")):
            pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
            o3d.io.write_point_cloud(str(path.with_name(f"{path.stem}_{r}_{name}.ply")), pc)


@torch.no_grad()
def partseg_panels(model, pts: torch.Tensor, category: torch.Tensor, target: torch.Tensor,
                   category_parts: Sequence[Sequence[int]]) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """For each cloud: (points (N, 3), predicted parts (N,), true parts (N,), shape mIoU in %), parts
    numbered within the shape's category (0 = its first part).

    pts: (B, N, 3), category: (B,), target: (B, N) global part labels; the prediction is the best
    part of the shape's category (as the point_partseg evaluation).
    """
    from pointcloud.tasks import category_part_mask, shape_miou

    model.eval()
    logits = model(pts, category).float()
    allowed = category_part_mask(category_parts, logits.shape[-1], logits.device)[category]
    pred = logits.masked_fill(~allowed[:, None], float("-inf")).argmax(-1)
    miou = shape_miou(pred, target, allowed)
    local = torch.zeros(logits.shape[-1], dtype=torch.long, device=logits.device)
    for parts in category_parts:
        local[list(parts)] = torch.arange(len(parts), device=logits.device)
    return [(pts[b].cpu().numpy(), local[pred[b]].cpu().numpy(), local[target[b]].cpu().numpy(), 100 * float(miou[b]))
            for b in range(pts.shape[0])]


def save_partseg_figure(panels, path: Path, names: Optional[Sequence[str]] = None) -> None:
    """Rows of [predicted parts, true parts], points coloured by part label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 3 * len(panels)))
    for r, (cloud, pred, truth, miou) in enumerate(panels):
        name = f"{names[r]}: " if names else ""
        for c, (labels, title) in enumerate(((pred, f"{name}predicted (mIoU {miou:.1f}%)"), (truth, "true parts"))):
            ax = fig.add_subplot(len(panels), 2, 2 * r + c + 1, projection="3d")
            # y is up; one colour per part of the category, the same in both panels
            ax.scatter(cloud[:, 0], cloud[:, 2], cloud[:, 1], s=2, c=labels, cmap="tab10", vmin=0, vmax=9)
            ax.view_init(elev=15, azim=-70)
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def visualize_partseg(model, dataset, picks: List[int], out: Path) -> Path:
    """Predicted and true parts of ``dataset[i]`` for i in ``picks``, saved to ``out``."""
    items = [dataset[i] for i in picks]
    device = next(model.parameters()).device
    pts, category, target = (torch.stack([item[j] for item in items]).to(device) for j in range(3))
    panels = partseg_panels(model, pts, category, target, dataset.category_parts)
    names = [dataset.categories[int(c)] for c in category] if hasattr(dataset, "categories") else None
    save_partseg_figure(panels, out, names)
    return out


def visualize(model, dataset, out: Path, num: int = 4, seed: int = 0) -> Path:
    """Reconstruct ``num`` samples spread evenly over ``dataset`` and save the figure to ``out``
    (part segmentation datasets: predicted next to true parts)."""
    picks = torch.linspace(0, len(dataset) - 1, min(num, len(dataset))).round().long().tolist()
    if hasattr(dataset, "category_parts"):
        out.parent.mkdir(parents=True, exist_ok=True)
        return visualize_partseg(model, dataset, picks, out)
    x = torch.stack([dataset[i][0] for i in picks])
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    x = x.to(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    if x.dim() == 4:
        tf = getattr(dataset, "transform", None)
        norm = next((t for t in getattr(tf, "transforms", []) if hasattr(t, "mean")), None)
        mean, std = (norm.mean, norm.std) if norm is not None else ((0, 0, 0), (1, 1, 1))
        save_image_figure(image_panels(model, x, mean, std), out)
    else:
        save_point_figure(point_panels(model, x), out)
    return out


def load_weights(model: torch.nn.Module, path: Path, cfg) -> None:
    """All of ``model``'s weights from ``path`` (ours, or official names the model converts)."""
    state = load_checkpoint(path)
    hint = config_hint(state.get("config") if isinstance(state, dict) else None, cfg, "model",
                       "Without --config, the config.yaml saved beside the checkpoint is used.")
    sd = extract_state_dict(state)
    check_shapes(model, sd, f"'{path}'", hint)
    load = getattr(model, "load_pretrained", model.load_state_dict)  # load_pretrained converts official names
    strict = {"strict": False} if "strict" in (accepted_keys(load) or ()) else {}
    try:
        result = load(sd, **strict)
    except RuntimeError as err:  # a size mismatch after the conversion
        raise CheckpointShapeError(f"'{path}' does not fit the config's model{hint}\n{err}") from None
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
    from map_core.config import load_config, validate
    from map_core.engine.tasks import build_task
    import image, pointcloud  # noqa: F401  (registration)

    try:
        if args.config is None:
            config, _, ckpt = saved_config(args.ckpt, "last.pth")
        else:
            config, ckpt = Path(args.config), Path(args.ckpt)
            ckpt = ckpt / "last.pth" if ckpt.is_dir() else ckpt
        cfg = validate(load_config(config, args.set))
        task = build_task(cfg)
        model = task.build_model()
        dataset = task.build_dataset(pick_split(cfg, args.split))
        if not isinstance(model, MAPPretrainer) and not hasattr(dataset, "category_parts"):
            raise ConfigError(f"{config}: model.NAME '{cfg.model.NAME}' builds a {type(model).__name__}; "
                              f"visualize needs a MAP pretraining model (e.g. map_pretrain, pointmap_pretrain) "
                              f"or a part segmentation config")
        load_weights(model, ckpt, cfg)
        print(visualize(model, dataset, Path(args.out), args.num))
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
