"""Checkpoints: crash-safe saving, safe loading, pretrained weights for finetuning, RNG state.

Loading never runs pickled code: ``torch.load(weights_only=True)`` with exactly
``argparse.Namespace`` and numpy scalar / dtype types allow-listed (what official MAP, Point-MAE
and Mamba3D checkpoints pickle beside tensors); an empty, truncated or foreign file is a UserError
naming it. A save that fails (a full disk) leaves the previous checkpoint in place and raises
CheckpointWriteError saying which epoch that one holds.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from map_core.errors import UserError
from map_core.weights import Coverage, load_weights, require_coverage

log = logging.getLogger(__name__)


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is kept."""


class _RecordingWriter:
    """A binary file that keeps the first OSError of its writes: torch.save reports a failed write as
    a RuntimeError of its own ('enforce fail at inline_container.cc'), losing the errno."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


def _open_binary(path: Path) -> BinaryIO:
    """The file a checkpoint is written to (one place, so tests can stand in a full disk)."""
    return open(path, "wb")


def _kept(path: Path) -> str:
    """What stays at ``path`` when writing it failed: 'the checkpoint of epoch N is kept'."""
    if not path.is_file():
        return f"no earlier {path.name} exists"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # whatever is there stays; its epoch is only for the message
        return f"the earlier {path.name} is kept"
    epoch = state.get("epoch") if isinstance(state, Mapping) else None
    return f"the checkpoint of epoch {epoch} is kept" if isinstance(epoch, int) else f"the earlier {path.name} is kept"


def _write_error(path: Path, err: BaseException) -> CheckpointWriteError:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return CheckpointWriteError(f"no space left on device writing '{path}'; {_kept(path)}")
    return CheckpointWriteError(f"cannot write '{path}' ({err}); {_kept(path)}")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, rename over ``path``, fsync the folder.

    A crash at any moment leaves either the previous complete file or the new one. A failed write
    (a full disk) removes the temp file and raises CheckpointWriteError; ``path`` is unchanged.
    """
    path = Path(path)
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = None
    try:
        with _open_binary(tmp) as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        recorded = writer.error if writer is not None else None
        if not isinstance(err, OSError) and recorded is None:
            raise  # not a write failure: a bug
        raise _write_error(path, recorded or err) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by writers that were killed mid-save."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a complete copy of ``src`` atomically (a hard link when the file system allows);
    a failed copy (a full disk) raises CheckpointWriteError and leaves ``dst`` unchanged."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as err:
        raise _write_error(dst, err) from err
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

    Raises UserError naming the file if it is missing, empty, truncated or not a ``torch.save``
    file, or if its pickle references anything beyond tensors, containers, ``argparse.Namespace``
    and numpy scalars / dtypes.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint '{path}' is empty (0 bytes; a save that never finished?)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace] + _numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        reason = next((line for line in detail if "GLOBAL" in line or "Unsupported" in line), None)
        if reason is None:  # not a refused global: the bytes are not a pickle
            raise UserError(f"'{path}' is not a readable checkpoint ({detail[0] if detail else 'not a pickle'}; "
                            f"expected a file written by torch.save)") from None
        raise UserError(
            f"refused to load '{path}': it is not a plain checkpoint (its pickle asks for code "
            f"or objects that are not allowed: {reason.strip()})"
        ) from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0]  # torch's first sentence
        raise UserError(f"'{path}' is not a readable checkpoint (truncated, or not written by torch.save: "
                        f"{type(err).__name__}{': ' + first if first else ''})") from None


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
