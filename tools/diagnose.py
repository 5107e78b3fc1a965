"""What does a pretraining checkpoint's loss use? Loss ablations and tokeniser scales on held-out data.

    python tools/diagnose.py --config configs/demo/pointmap_pretrain.yaml --ckpt PRETRAIN.pth
    python tools/diagnose.py --config configs/demo/pointmap_pretrain.yaml     # random weights

On the ``val`` split, with one fixed mask per batch (the same for every line), prints one JSON object:

- ``loss``: the validation reconstruction loss;
- ``loss_content_blind``: every token's features replaced by their mean over the batch (the encoder
  sees positions only); equal to ``loss`` when the loss does not use the token content;
- ``loss_no_encoder_pos``: the encoder's position embedding zeroed (the decoder keeps its own);
- ``loss_zero_prediction``: the loss of predicting zeros (points: every point at its group centre;
  images: the mean of each normalised patch);
- ``pos_norm`` / ``feature_norm``: mean L2 norm of the encoder's position embedding and of the
  token features (evaluation mode).

User errors (a config that is not a pretraining one, an unreadable checkpoint) end with one
'error: ...' line and exit code 2. Installed, this is also the command `map-diagnose`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

try:
    from map_core.engine.cli import load_all_weights
    from map_core.engine.schema import load_experiment
    from map_core.engine.console import USER_ERRORS, add_debug_flag, positive_int, report_error
    from map_core.engine.tasks import build_task, to_device
    from map_core.errors import ConfigError
    from map_core.masking import mask_to_indices
    from map_core.modalities import load_modalities
    from map_core.pretrain import MAPPretrainer, Tokens
    from map_core.tokens import gather_tokens
except ModuleNotFoundError as err:  # a checkout that is not installed
    if err.name != "map_core":
        raise
    sys.exit("error: the map_core package is not installed; run `pip install -e .` in the repository root")

TokenChange = Optional[Callable[[Tokens], None]]


def _content_blind(tok: Tokens) -> None:
    tok.x = tok.x.mean(dim=(0, 1), keepdim=True).expand_as(tok.x)


def _no_encoder_pos(tok: Tokens) -> None:
    tok.pos = torch.zeros_like(tok.pos)


def _loss(model: MAPPretrainer, inputs: torch.Tensor, mask: Optional[torch.Tensor], change: TokenChange) -> float:
    """The model's loss with ``change`` applied to the tokeniser's output (a forward hook)."""
    hook = None if change is None else model.tokenizer.register_forward_hook(lambda _module, _args, tok: change(tok))
    try:
        return float(model(inputs, mask)[0])
    finally:
        if hook is not None:
            hook.remove()


@torch.no_grad()
def diagnose(model: MAPPretrainer, batches: List[torch.Tensor], seed: int = 0) -> Dict[str, float]:
    """The loss ablations and tokeniser scales of the module docstring, averaged over ``batches``."""
    model.eval()
    sums: Dict[str, float] = {}
    generator = torch.Generator().manual_seed(seed)
    for inputs in batches:
        tok = model.tokenizer(inputs)
        mask = model.objective.sample_mask(len(inputs), generator=generator) if model.objective.uses_mask else None
        predicted = mask_to_indices(mask if mask is not None else model.objective.predicted_rows(len(inputs)))[1]
        target = gather_tokens(tok.target, predicted)
        values = {
            "loss": _loss(model, inputs, mask, None),
            "loss_content_blind": _loss(model, inputs, mask, _content_blind),
            "loss_no_encoder_pos": _loss(model, inputs, mask, _no_encoder_pos),
            "loss_zero_prediction": float(model.loss_fn(torch.zeros_like(target).flatten(2), target)),
            "pos_norm": float(tok.pos.expand_as(tok.x).norm(dim=-1).mean()),
            "feature_norm": float(tok.x.norm(dim=-1).mean()),
        }
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value / len(batches)
    return sums


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a pretraining config with a dataset.val section")
    p.add_argument("--ckpt", default=None, help="pretraining checkpoint (default: random weights)")
    p.add_argument("--batches", type=positive_int, default=4, help="validation batches to average over")
    p.add_argument("--seed", type=int, default=0, help="model init (without --ckpt) and masks")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    add_debug_flag(p)
    args = p.parse_args(argv)
    try:
        load_modalities()
        cfg = load_experiment(args.config, args.set)
        task = build_task(cfg)
        torch.manual_seed(args.seed)
        model = task.build_model()
        if not isinstance(model, MAPPretrainer):
            raise ConfigError(f"{args.config}: model.NAME '{cfg.model.NAME}' builds a {type(model).__name__}; "
                              f"diagnose needs a pretraining config (a MAP pretraining model)")
        if "val" not in cfg.dataset:
            raise ConfigError(f"{args.config}: no dataset.val section; diagnose reads the validation split")
        if args.ckpt:
            load_all_weights(model, Path(args.ckpt), cfg)
        loader = torch.utils.data.DataLoader(task.build_dataset("val"), batch_size=64, shuffle=False)
        batches = []
        for batch in loader:
            batch = task.preprocess(to_device(batch, torch.device("cpu")), training=False)
            batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
            if len(batches) == args.batches:
                break
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    print(json.dumps({k: round(v, 5) for k, v in diagnose(model, batches, args.seed).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
