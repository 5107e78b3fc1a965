"""Experiment folders: named inside their root, owned by one run at a time, never overwritten
silently, found again from a checkpoint.

``<exp-root>/<config stem>/<exp name>/``: the name is a relative path that stays inside the root.
A running run holds ``run.lock`` (its pid, host, start and command); a second run into the folder
is refused naming the owner, and a lock left by a dead process of this host is taken over with a
warning. A folder holding checkpoints (or, for tasks that save none such as the linear SVM, result
rows in ``metrics.jsonl``) belongs to a run: starting again without ``--resume`` is refused unless
the caller asks to overwrite, and then only the files the project writes (``last.pth``,
``best.pth``, ``epoch_XXXX.pth``, the records, fold folders' same) are removed; anything else in
the folder is kept. The ``config.yaml`` saved in a folder is the config of its checkpoints, so
``--test``, ``--vote`` and the visualiser can use it instead of asking for every ``--set`` again.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path, PurePath
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from map_core.config import config_diff
from map_core.engine.checkpoint import process_alive
from map_core.engine.schema import ExperimentConfig, fold_protocols
from map_core.errors import ConfigError, UserError

log = logging.getLogger(__name__)

SAVED_CONFIG = "config.yaml"
LOCK_FILE = "run.lock"
CHECKPOINT_NAME = re.compile(r"(last|best|epoch_\d{4,})\.pth")
SAVE_TEMP_NAME = re.compile(r"\.(last|best|epoch_\d{4,})\.pth\.\d+\.tmp")  # left by a save killed midway
FOLD_DIR = re.compile(r"fold_\d+")
RUN_FILES = ("metrics.jsonl", "log.txt", SAVED_CONFIG)  # and the fold protocols' summaries (summary_files)
EVENTS_DIR, EVENTS_PREFIX = "tb", "events.out.tfevents."  # TensorBoard's files in the folder
RESULT_TYPES = ("test", "val", "vote")  # metrics.jsonl rows of a finished evaluation


class ExperimentExistsError(UserError):
    """A run without --resume would overwrite the checkpoints of an earlier run."""


class ExperimentLockedError(UserError):
    """Another run owns the experiment folder."""


def experiment_dir(config: str | Path, exp_root: Optional[str | Path], exp_name: str) -> Path:
    """``<exp_root>/<config stem>/<exp_name>``; ``exp_root`` defaults to ``$MAP_EXP_ROOT``, else
    ``experiments``. A config.yaml saved in an experiment folder stands for that folder. Raises
    ConfigError when ``exp_name`` would leave the root (absolute, ``..``) or names no folder."""
    config = Path(config)
    if config.name == SAVED_CONFIG and is_experiment_dir(config.parent):
        return config.parent
    name = PurePath(exp_name)
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise ConfigError(f"--exp-name '{exp_name}': expected a folder name inside the experiment root "
                          f"(relative, without '..'); the root is set with --exp-root")
    root = Path(exp_root or os.environ.get("MAP_EXP_ROOT") or "experiments")
    return root / config.stem / name


def _run_folders(exp_dir: Path) -> List[Path]:
    """``exp_dir`` and its few-shot fold folders (none when ``exp_dir`` does not exist)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    return [exp_dir] + sorted(d for d in exp_dir.iterdir() if d.is_dir() and FOLD_DIR.fullmatch(d.name))


def checkpoints_in(exp_dir: Path) -> List[Path]:
    """The checkpoints the project saved in ``exp_dir`` and in its few-shot fold folders, sorted."""
    return sorted(p for folder in _run_folders(exp_dir) for p in folder.iterdir()
                  if p.is_file() and CHECKPOINT_NAME.fullmatch(p.name))


def run_files(exp_dir: Path) -> List[Path]:
    """Every file the project writes for a run in ``exp_dir`` (checkpoints, their leftover temp
    files, records, TensorBoard events; the same in fold folders), as found on disk."""
    found: List[Path] = []
    for folder in _run_folders(exp_dir):
        found += [p for p in folder.iterdir() if p.is_file() and (
            p.name in RUN_FILES + summary_files() or CHECKPOINT_NAME.fullmatch(p.name)
            or SAVE_TEMP_NAME.fullmatch(p.name))]
        events = folder / EVENTS_DIR
        if events.is_dir():
            found += [p for p in events.iterdir() if p.is_file() and p.name.startswith(EVENTS_PREFIX)]
    return sorted(found)


def remove_run(exp_dir: Path) -> List[Path]:
    """Delete the files of :func:`run_files` and the ``tb/`` and fold folders they leave empty;
    returns the files left in ``exp_dir`` besides the lock (those the project did not write)."""
    folders = _run_folders(exp_dir)
    for path in run_files(exp_dir):
        path.unlink()
    for folder in reversed(folders):  # fold folders first, then the experiment folder's tb/
        for empty in (folder / EVENTS_DIR, folder):
            if empty.is_dir() and empty != Path(exp_dir) and not any(empty.iterdir()):
                empty.rmdir()
    return sorted(p for p in Path(exp_dir).rglob("*") if p.is_file() and p.name != LOCK_FILE)


def _holds_results(metrics: Path) -> bool:
    """True when ``metrics.jsonl`` has a test / val / vote row (torn lines are ignored)."""
    if not metrics.is_file():
        return False
    for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
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
    ``overwrite`` delete the earlier run's files (:func:`remove_run`; when ``remove``: one rank does).
    Files the project did not write are kept, and named in a warning."""
    metrics = Path(exp_dir) / "metrics.jsonl"
    found = checkpoints_in(exp_dir) + ([metrics] if _holds_results(metrics) else [])
    if found and not overwrite:
        names = ", ".join(str(p.relative_to(exp_dir)) for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ExperimentExistsError(
            f"experiment folder '{exp_dir}' already holds an earlier run ({names}); continue that run with "
            f"--resume, or start another with --exp-name NAME (or replace it with --overwrite)")
    if found and remove:
        log.warning("--overwrite: removing the earlier run in %s", exp_dir)
        kept = remove_run(exp_dir)
        if kept:
            log.warning("--overwrite kept %d file(s) the project did not write in %s: %s", len(kept), exp_dir,
                        ", ".join(str(p.relative_to(exp_dir)) for p in kept[:5]) + (" ..." if len(kept) > 5 else ""))


# ----------------------------------------------------------------------------- the lock
def _owner_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "start": datetime.datetime.now().isoformat(timespec="seconds"),
                       "command": " ".join(sys.argv)})


def _read_owner(lock: Path) -> Tuple[str, Dict[str, Any]]:
    """(the lock's text, its owner fields; {} when unreadable)."""
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", {}
    try:
        owner = json.loads(text)
    except ValueError:
        return text, {}
    return text, owner if isinstance(owner, dict) else {}


def _describe(owner: Mapping[str, Any]) -> str:
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('start')}"
            + (f": {owner['command']}" if owner.get("command") else ""))


def _take_over(lock: Path, stale_text: str) -> None:
    """Move a stale lock aside; if a newer owner's lock was moved instead (a race), put it back."""
    aside = lock.with_name(f"{lock.name}.{os.getpid()}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:  # another run took it over first
        return
    if aside.read_text(encoding="utf-8") != stale_text:
        os.rename(aside, lock)
        return
    aside.unlink()


@contextlib.contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[Path]:
    """Own ``exp_dir`` (created if missing) while the block runs, through ``exp_dir/run.lock``.

    Raises ExperimentLockedError naming the owner when another live run holds the lock. A lock left
    by a process of this host that no longer runs is taken over, with a warning.
    """
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    lock, mine = exp_dir / LOCK_FILE, _owner_text()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text, owner = _read_owner(lock)
            here, pid = owner.get("host") == socket.gethostname(), owner.get("pid")
            if not (here and isinstance(pid, int) and not process_alive(pid)):
                who = _describe(owner) if owner else f"its lock '{lock}' is unreadable"
                unsure = "" if here else f"; if that run is no longer alive, delete '{lock}'"
                raise ExperimentLockedError(f"experiment folder '{exp_dir}' is in use by another run ({who}); "
                                            f"wait for it to end, or use another --exp-name{unsure}") from None
            log.warning("taking over the lock of %s in %s: that process no longer runs", _describe(owner), exp_dir)
            _take_over(lock, text)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(mine)
        break
    else:
        raise ExperimentLockedError(f"experiment folder '{exp_dir}': could not take its lock '{lock}'")
    try:
        yield lock
    finally:
        if _read_owner(lock)[0] == mine:
            lock.unlink()


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
