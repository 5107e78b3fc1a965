"""Running a config as ``tools/train.py`` asks: train, few-shot folds, ``--test``, ``--vote``.

``run(cfg, options)`` is the single entry; the training itself is ``map_core.engine.trainer.Trainer``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from map_core.config import ExperimentConfig, dump_config
from map_core.errors import ConfigError, UserError
from map_core.engine import checkpoint as ckpt_io
from map_core.engine.distributed import DistInfo, barrier, init_distributed
from map_core.engine.experiment import checkpoints_in, prepare_fresh_start
from map_core.engine.progress import ProgressFactory
from map_core.engine.trainer import Trainer
from map_core.modalities import FOLD_CONFIGS

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What ``tools/train.py`` passes besides the config."""

    exp_dir: Path
    finetune: Optional[str] = None
    resume: Optional[str] = None  # "" = the experiment's last.pth
    ckpt: Optional[str] = None
    mode: str = "train"  # train | test | vote
    progress: Optional[ProgressFactory] = None
    overwrite: bool = False  # replace the checkpoints of an earlier run in exp_dir
    allow_partial_load: bool = False  # accept a --finetune checkpoint that fills under half of the encoder


def _eval_splits(cfg: ExperimentConfig) -> tuple:
    for split in ("test", "val"):
        if split in cfg.dataset:
            return (split,)
    raise ConfigError("--test / --vote need a dataset.test (or dataset.val) section")


def _train_once(cfg: ExperimentConfig, opts: RunOptions, exp_dir: Path, dist_info: DistInfo,
                resume: Optional[Path]) -> Dict[str, Any]:
    trainer = Trainer(cfg, exp_dir, dist_info, opts.progress)
    if dist_info.is_main:
        dump_config(cfg, exp_dir / "config.yaml")
    return trainer.fit(opts.finetune, resume, opts.allow_partial_load)


def _finished_fold(fold_dir: Path, epochs: int) -> Tuple[Optional[Path], Optional[float]]:
    """(checkpoint to resume the fold from, or None; its best metric if it trained all ``epochs``)."""
    last = fold_dir / "last.pth"
    if not last.is_file():
        return None, None
    state = ckpt_io.load_checkpoint(last)
    return (None, state["best_metric"]) if state["epoch"] >= epochs else (last, None)


def run_fewshot(cfg: ExperimentConfig, opts: RunOptions, dist_info: DistInfo) -> Dict[str, Any]:
    """One finetune per fold; mean / std of the best metrics. Fold k's config is ``fold_config(cfg, k)``
    of the modality that registered the ``fewshot`` section (``map_core.modalities.register_folds``).

    With ``--resume`` finished folds are skipped (their best metric read from ``fold_k/last.pth``),
    a fold with a checkpoint continues from it, and folds without one start from the beginning.
    """
    folds, epochs = cfg.fewshot.folds, cfg.scheduler.epochs
    fold_config = FOLD_CONFIGS["fewshot"]
    if opts.resume:
        raise ConfigError(f"--resume {opts.resume}: a few-shot run resumes each fold from its own last.pth; "
                          f"pass --resume without a path")
    if opts.resume is not None and not checkpoints_in(opts.exp_dir):
        raise UserError(f"--resume: no fold of '{opts.exp_dir}' has a checkpoint yet; start without --resume")
    bar = opts.progress(folds, "few-shot folds") if opts.progress and dist_info.is_main else None
    results = []
    try:
        for fold in range(folds):
            fold_dir = opts.exp_dir / f"fold_{fold}"
            resume, best = _finished_fold(fold_dir, epochs) if opts.resume is not None else (None, None)
            if best is None:
                log.info("few-shot fold %d of %d", fold + 1, folds)
                best = _train_once(fold_config(cfg, fold), opts, fold_dir, dist_info, resume)["best_metric"]
            else:
                log.info("few-shot fold %d of %d finished earlier (best %s %.4f): skipped", fold + 1, folds,
                         Trainer.metric_name(cfg), best)
            results.append(best)
            if bar is not None:
                bar.update(1, {"last": f"{best:.2f}"})
    finally:
        if bar is not None:
            bar.close()
    summary = {"metric": Trainer.metric_name(cfg), "way": cfg.fewshot.way, "shot": cfg.fewshot.shot,
               "per_fold": results, "mean": float(np.mean(results)), "std": float(np.std(results))}
    if dist_info.is_main:
        (opts.exp_dir / "fewshot_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run(cfg: ExperimentConfig, opts: RunOptions) -> Dict[str, Any]:
    """Train (or few-shot, test, vote) as the options say; returns the final metrics.

    A training run without ``resume`` refuses an experiment folder that holds checkpoints, unless
    ``overwrite`` (then the earlier run is removed first).
    """
    dist_info = init_distributed(cfg.runtime.device)
    if opts.mode == "train" and opts.resume is None:
        prepare_fresh_start(opts.exp_dir, opts.overwrite, remove=dist_info.is_main)
    if dist_info.is_main:
        opts.exp_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    if opts.mode in ("test", "vote"):
        path = Path(opts.ckpt or opts.finetune or opts.exp_dir / "best.pth")
        trainer = Trainer(cfg, opts.exp_dir, dist_info, opts.progress, splits=_eval_splits(cfg))
        try:
            trainer.load_for_eval(path)
            return trainer.test(vote=opts.mode == "vote")
        finally:
            trainer.records.close()
    if "fewshot" in cfg.optional:  # the config has a fewshot: section (the point-cloud modality's)
        return run_fewshot(cfg, opts, dist_info)
    return _train_once(cfg, opts, opts.exp_dir, dist_info, ckpt_io.resolve_resume(opts.resume, opts.exp_dir))
