"""Checkpoints: crash-safe saving, safe loading, pretrained weights for finetuning, RNG state.

Loading never runs pickled code: ``torch.load(weights_only=True)`` with exactly
``argparse.Namespace`` and numpy scalar / dtype types allow-listed (what official MAP, Point-MAE
and Mamba3D checkpoints pickle beside tensors).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import pickle
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from map_core.errors import UserError
from map_core.weights import Coverage, load_weights, require_coverage

log = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, rename over ``path``, fsync the folder.

    A crash at any moment leaves either the previous complete file or the new one.
    """
    path = Path(path)
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by writers that were killed mid-save."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a complete copy of ``src`` atomically (a hard link when the file system allows)."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _numpy_safe_globals() -> List[Any]:
    """numpy scalar reconstructor and dtype classes, under both numpy 1.x and 2.x module paths."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    names = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    dtype_classes = getattr(np, "dtypes", None)
    if dtype_classes is not None:
        names += [getattr(dtype_classes, n) for n in dir(dtype_classes)
                  if n.endswith("DType") and n not in ("ObjectDType", "VoidDType")]
    return names


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint onto the CPU without executing pickled code.

    Raises UserError if the file is missing or if its pickle references anything beyond tensors,
    containers, ``argparse.Namespace`` and numpy scalars / dtypes.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace] + _numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        reason = next((line for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[0] if detail else "")
        raise UserError(
            f"refused to load '{path}': it is not a plain checkpoint (its pickle asks for code "
            f"or objects that are not allowed: {reason.strip()})"
        ) from None


def load_finetune_weights(model: nn.Module, path: str | Path, allow_partial: bool = False) -> Coverage:
    """Initialise ``model`` from a pretrained checkpoint before finetuning; returns what it filled.

    Loads through :func:`map_core.weights.load_weights` (unwrapping, the model's renaming of
    official names, shape check). Missing / unexpected keys are logged; a load that fills under
    half of the encoder's tensors raises PartialLoadError unless ``allow_partial``.
    """
    result = load_weights(model, load_checkpoint(path), f"'{path}'")
    coverage = Coverage.of(model, result.missing_keys)
    if not allow_partial:
        require_coverage(coverage, f"--finetune '{path}'", result.checkpoint_keys, model)
    log.info("loaded pretrained weights from %s: %s", path, coverage)
    if result.missing_keys:
        log.warning("missing keys (kept at init): %s", ", ".join(result.missing_keys))
    if result.unexpected_keys:
        log.warning("unexpected keys (ignored): %s", ", ".join(result.unexpected_keys))
    return coverage


def rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as plain values (weights-only loadable, picklable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": bytes(torch.get_rng_state().numpy()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [bytes(s.numpy()) for s in torch.cuda.get_rng_state_all()]
    return state


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, seed, gauss = state["python"]
    random.setstate((version, tuple(seed), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(s) for s in state["cuda"]])


def resolve_resume(resume: Optional[str], exp_dir: Path) -> Optional[Path]:
    """``--resume`` with no value means the experiment's ``last.pth``."""
    if resume is None:
        return None
    path = Path(resume) if resume else exp_dir / "last.pth"
    if not path.is_file():
        raise UserError(f"--resume: checkpoint '{path}' not found")
    return path
