"""Experiment records on rank 0: ``log.txt``, ``metrics.jsonl`` and TensorBoard events.

Other ranks get a logger that writes nothing. Library code logs through ``logging``; this module
only adds a file handler for ``log.txt`` and writes structured metrics. A resumed run first
``rewind``s the records to its checkpoint's step, so an interrupted epoch leaves no duplicate rows.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)


class ExperimentLogger:
    """Writes one JSON object per call to ``metrics.jsonl`` (with a ``type`` field) and to TensorBoard."""

    def __init__(self, folder: Optional[Path], enabled: bool):
        self.enabled = enabled and folder is not None
        self.folder = folder
        self._file_handler: Optional[logging.Handler] = None
        self._tb: Any = None
        self._tb_opened = False
        self._purge_step: Optional[int] = None
        if not self.enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        # a message the encoding cannot hold (a file name that is not UTF-8) is written with escapes
        self._file_handler = logging.FileHandler(folder / "log.txt", encoding="utf-8", errors="backslashreplace")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._file_handler)
        if logging.getLogger().level > logging.INFO or logging.getLogger().level == logging.NOTSET:
            logging.getLogger().setLevel(logging.INFO)

    def rewind(self, step: int) -> None:
        """Training continues after ``step``: drop the rows of ``metrics.jsonl`` logged after it (and
        any torn last line), and let TensorBoard purge the events after it (``purge_step``)."""
        if not self.enabled:
            return
        path = self.folder / "metrics.jsonl"
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
            if len(kept) < len(lines):
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
                os.replace(tmp, path)
                log.info("metrics.jsonl: dropped %d rows logged after step %d", len(lines) - len(kept), step)
        if any((self.folder / "tb").glob("events.out.tfevents.*")):
            self._purge_step = step + 1

    def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        """Append ``{"type": kind, "step": step, **values}``; numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        record = {"type": kind, "step": step, **values}
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if not self._tb_opened:
            self._tb, self._tb_opened = _tensorboard_writer(self.folder, self._purge_step), True
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file_handler is not None:
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None


def _step_of(line: str) -> Optional[int]:
    """The ``step`` of one metrics.jsonl line (None for a torn or foreign line)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _tensorboard_writer(folder: Path, purge_step: Optional[int]) -> Any:
    """A SummaryWriter on ``folder/tb``; ``purge_step`` hides earlier events at or after that step."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard events will be written")
        return None
    return SummaryWriter(log_dir=str(folder / "tb"), purge_step=purge_step)
