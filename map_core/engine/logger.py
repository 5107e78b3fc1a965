"""Experiment records on rank 0: ``log.txt``, ``metrics.jsonl`` and TensorBoard events.

Other ranks get a logger that writes nothing. Library code logs through ``logging``; this module
only adds a file handler for ``log.txt`` and writes structured metrics.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)


class ExperimentLogger:
    """Writes one JSON object per call to ``metrics.jsonl`` (with a ``type`` field) and to TensorBoard."""

    def __init__(self, folder: Optional[Path], enabled: bool):
        self.enabled = enabled and folder is not None
        self.folder = folder
        self._file_handler: Optional[logging.Handler] = None
        self._tb = None
        if not self.enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._file_handler = logging.FileHandler(folder / "log.txt")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._file_handler)
        if logging.getLogger().level > logging.INFO or logging.getLogger().level == logging.NOTSET:
            logging.getLogger().setLevel(logging.INFO)
        self._tb = _tensorboard_writer(folder)

    def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        """Append ``{"type": kind, "step": step, **values}``; numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        record = {"type": kind, "step": step, **values}
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._file_handler is not None:
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard events will be written")
        return None
    return SummaryWriter(log_dir=str(folder / "tb"))
