"""Running a config as ``tools/train.py`` asks: train, folds (of a fold protocol that a modality
registered), ``--test``, ``--vote``.

``run(cfg, options)`` is the single entry; the training itself is ``map_core.engine.trainer.Trainer``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from map_core.errors import ConfigError, UserError
from map_core.engine import checkpoint as ckpt_io
from map_core.engine.distributed import DistInfo, barrier, init_distributed
from map_core.engine.experiment import checkpoints_in, prepare_fresh_start
from map_core.engine.progress import ProgressFactory
from map_core.engine.schema import ExperimentConfig, FoldProtocol
from map_core.engine.tasks import build_task
from map_core.engine.trainer import Trainer

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
    allow_changed_config: bool = False  # accept a --resume checkpoint saved with other config values


def _eval_splits(cfg: ExperimentConfig) -> tuple:
    for split in ("test", "val"):
        if split in cfg.dataset:
            return (split,)
    raise ConfigError("--test / --vote need a dataset.test (or dataset.val) section")


def _train_once(cfg: ExperimentConfig, opts: RunOptions, exp_dir: Path, dist_info: DistInfo,
                resume: Optional[Path]) -> Dict[str, Any]:
    trainer = Trainer(cfg, exp_dir, dist_info, opts.progress)
    return trainer.fit(opts.finetune, resume, opts.allow_partial_load, opts.allow_changed_config)


def _finished_fold(fold_dir: Path, epochs: int) -> Tuple[Optional[Path], Optional[float]]:
    """(checkpoint to resume the fold from, or None; its best metric if it trained all ``epochs``)."""
    last = fold_dir / "last.pth"
    if not last.is_file():
        return None, None
    state = ckpt_io.load_checkpoint(last)
    return (None, state["best_metric"]) if state["epoch"] >= epochs else (last, None)


def _check_folds(fold_cfgs: List[ExperimentConfig]) -> None:
    """Open the datasets of every fold before the first one trains, so a missing or broken fold file
    stops the run at once instead of after the folds before it."""
    for fold_cfg in fold_cfgs:
        task = build_task(fold_cfg)
        for split in fold_cfg.dataset:
            task.build_dataset(split)


def run_folds(cfg: ExperimentConfig, protocol: FoldProtocol, opts: RunOptions, dist_info: DistInfo) -> Dict[str, Any]:
    """One training per fold of ``protocol`` (a section of ``cfg``, registered by a modality), fold k
    in ``fold_<k>/`` with the config ``protocol.fold_config(cfg, k)``; the mean / std of the best
    metrics go to ``<section>_summary.json``.

    With ``--resume`` finished folds are skipped (their best metric read from ``fold_k/last.pth``),
    a fold with a checkpoint continues from it, and folds without one start from the beginning.
    """
    section, epochs = cfg.optional[protocol.section], cfg.scheduler.epochs
    if opts.resume:
        raise ConfigError(f"--resume {opts.resume}: a {protocol.section} run resumes each fold from its own "
                          f"last.pth; pass --resume without a path")
    if opts.resume is not None and not checkpoints_in(opts.exp_dir):
        raise UserError(f"--resume: no fold of '{opts.exp_dir}' has a checkpoint yet; start without --resume")
    fold_cfgs = [protocol.fold_config(cfg, fold) for fold in range(section.folds)]
    _check_folds(fold_cfgs)
    bar = opts.progress(len(fold_cfgs), f"{protocol.section} folds") if opts.progress and dist_info.is_main else None
    results = []
    try:
        for fold, fold_cfg in enumerate(fold_cfgs):
            fold_dir = opts.exp_dir / f"fold_{fold}"
            resume, best = _finished_fold(fold_dir, epochs) if opts.resume is not None else (None, None)
            if best is None:
                log.info("%s fold %d of %d", protocol.section, fold + 1, len(fold_cfgs))
                best = _train_once(fold_cfg, opts, fold_dir, dist_info, resume)["best_metric"]
            else:
                log.info("%s fold %d of %d finished earlier (best %s %.4f): skipped", protocol.section, fold + 1,
                         len(fold_cfgs), Trainer.metric_name(cfg), best)
            results.append(best)
            if bar is not None:
                bar.update(1, {"last": f"{best:.2f}"})
    finally:
        if bar is not None:
            bar.close()
    summary = {"metric": Trainer.metric_name(cfg), **asdict(section), "per_fold": results,
               "mean": float(np.mean(results)), "std": float(np.std(results))}
    if dist_info.is_main:
        (opts.exp_dir / protocol.summary_file).write_text(json.dumps(summary, indent=2))
    return summary


def run(cfg: ExperimentConfig, opts: RunOptions) -> Dict[str, Any]:
    """Train (or train the folds, test, vote) as the options say; returns the final metrics.

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
    protocol = cfg.fold_protocol()
    if protocol is not None:
        return run_folds(cfg, protocol, opts, dist_info)
    return _train_once(cfg, opts, opts.exp_dir, dist_info, ckpt_io.resolve_resume(opts.resume, opts.exp_dir))
