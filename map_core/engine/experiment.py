"""Experiment folders: never overwritten silently, found again from a checkpoint, resumed fold by fold.

A folder holding checkpoints (or, for tasks that save none such as the linear SVM, result rows in
``metrics.jsonl``) belongs to a run: starting again without ``--resume`` is refused unless the
caller asks to overwrite (then the earlier run's files are removed first). The
``config.yaml`` saved in a folder is the config of its checkpoints, so ``--test``, ``--vote`` and
the visualiser can use it instead of asking for every ``--set`` again.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from map_core.config import config_diff
from map_core.engine.schema import ExperimentConfig, fold_protocols
from map_core.errors import ConfigError, UserError

log = logging.getLogger(__name__)

SAVED_CONFIG = "config.yaml"
CHECKPOINT_PATTERNS = ("*.pth", "fold_*/*.pth")
RUN_FILES = ("metrics.jsonl", "log.txt", SAVED_CONFIG, "tb")  # and the fold protocols' summaries
RESULT_TYPES = ("test", "val", "vote")  # metrics.jsonl rows of a finished evaluation


class ExperimentExistsError(UserError):
    """A run without --resume would overwrite the checkpoints of an earlier run."""


def checkpoints_in(exp_dir: Path) -> List[Path]:
    """The checkpoints of the run in ``exp_dir`` (its own and those of its folds), sorted."""
    return sorted(p for pattern in CHECKPOINT_PATTERNS for p in Path(exp_dir).glob(pattern))


def _holds_results(metrics: Path) -> bool:
    """True when ``metrics.jsonl`` has a test / val / vote row (torn lines are ignored)."""
    if not metrics.is_file():
        return False
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("type") in RESULT_TYPES:
                return True
        except (ValueError, AttributeError):
            continue
    return False


def summary_files() -> Tuple[str, ...]:
    """The summary file each registered fold protocol writes (``<section>_summary.json``)."""
    return tuple(p.summary_file for p in fold_protocols())


def prepare_fresh_start(exp_dir: Path, overwrite: bool, remove: bool = True) -> None:
    """Before a run that does not resume: refuse a folder with checkpoints or results, or with
    ``overwrite`` delete the earlier run's checkpoints, fold folders and records (when ``remove``:
    one rank does)."""
    metrics = Path(exp_dir) / "metrics.jsonl"
    found = checkpoints_in(exp_dir) + ([metrics] if _holds_results(metrics) else [])
    if found and not overwrite:
        names = ", ".join(str(p.relative_to(exp_dir)) for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ExperimentExistsError(
            f"experiment folder '{exp_dir}' already holds an earlier run ({names}); continue that run with "
            f"--resume, or start another with --exp-name NAME (or replace it with --overwrite)")
    if found and remove:
        log.warning("--overwrite: removing the earlier run in %s", exp_dir)
        for path in found + [Path(exp_dir) / name for name in RUN_FILES + summary_files()]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for fold in Path(exp_dir).glob("fold_*"):
            shutil.rmtree(fold)


def is_experiment_dir(folder: Path) -> bool:
    """True for a folder with a saved config and a run's log or checkpoints."""
    folder = Path(folder)
    return (folder / SAVED_CONFIG).is_file() and ((folder / "log.txt").is_file() or bool(checkpoints_in(folder)))


def saved_config(ckpt: str | Path, default_name: str) -> Tuple[Path, Path, Path]:
    """(config.yaml, experiment folder, checkpoint file) for ``ckpt``: a checkpoint file (its folder
    is the experiment) or an experiment folder (its ``default_name`` is the checkpoint)."""
    ckpt = Path(ckpt)
    folder, path = (ckpt, ckpt / default_name) if ckpt.is_dir() else (ckpt.parent, ckpt)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    config = folder / SAVED_CONFIG
    if not config.is_file():
        raise ConfigError(f"no {SAVED_CONFIG} beside '{path}' (it is saved in every experiment folder); "
                          f"pass --config CONFIG.yaml")
    return config, folder, path


def config_hint(saved: Optional[Mapping[str, Any]], cfg: ExperimentConfig, section: str, fix: str) -> str:
    """A sentence listing how ``section`` of a checkpoint's saved config differs from ``cfg`` (or '')."""
    if not isinstance(saved, Mapping) or section not in saved:
        return ""
    diffs = config_diff(saved[section], cfg.to_dict()[section], section)
    if not diffs:
        return ""
    return f"; it was made with another {section} config (checkpoint -> now: {'; '.join(diffs)}). {fix}"


def check_same_optimizer(saved: Optional[Mapping[str, Any]], cfg: ExperimentConfig, path: Path) -> None:
    """``--resume`` needs the optimizer the checkpoint's state belongs to."""
    if not isinstance(saved, Mapping) or "optimizer" not in saved:
        return
    old, new = saved["optimizer"].get("NAME"), cfg.optimizer.NAME
    if old != new:
        raise ConfigError(f"--resume: '{path}' holds the state of optimizer '{old}', but optimizer.NAME is now "
                          f"'{new}'; resume with optimizer.NAME={old}, or start a new run (--exp-name)")
