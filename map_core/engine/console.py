"""The console of the entry points (``tools/``, ``datasets/check_data.py``): one-line errors, log
lines, progress bars, argument types. Only entry points call these; the rest of the library logs.

User errors (``map_core.errors.UserError``: config, data, checkpoint, shape) end a tool with one
``error: ...`` line on stderr and exit code 2; ``--debug`` (or ``MAP_DEBUG=1``) prints the traceback
first. Anything else is a bug and keeps Python's traceback. Progress: tqdm bars on a terminal
(log lines go through ``tqdm.write``, so they never collide with a bar); otherwise one log line
per loop every ``MAP_PROGRESS_SECONDS`` seconds (default 30) with the count, rate and ETA. A text
that the console cannot encode (a file name that is not UTF-8) is written with backslash escapes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from typing import Any, Dict, Mapping, Optional

from tqdm import tqdm

from map_core.engine.progress import ProgressFactory
from map_core.errors import ConfigError, UserError

USER_ERRORS = (UserError, FileNotFoundError)
EXIT_USER_ERROR = 2
DEBUG_ENV = "MAP_DEBUG"
PROGRESS_SECONDS_ENV = "MAP_PROGRESS_SECONDS"
STEP_LOGGER = "map_core.engine.progress"  # the engine's per-step lines: log.txt only, the bar shows them

log = logging.getLogger("map_core.engine.console")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of user errors too (or set {DEBUG_ENV}=1)")


def error_message(err: BaseException) -> str:
    """The message for the user. An error re-raised from a DataLoader worker carries the worker's
    traceback in its text; only the original message is kept."""
    text = str(err)
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    if "Original Traceback" in text and marker in text:
        text = text[text.rindex(marker) + len(marker):]
    return text.strip()


def report_error(err: BaseException, debug: bool = False) -> int:
    """Print ``error: <message>`` (after the traceback when debugging) and return the exit code 2.

    Under ``torchrun`` every rank meets the same config error: only rank 0 reports it, the others
    exit quietly with the same code. Other errors may be one rank's own (a bad sample in its
    shard): those name the rank."""
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0 and isinstance(err, ConfigError):
        return EXIT_USER_ERROR
    if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(type(err), err, err.__traceback__)
    _escape_unencodable(sys.stderr)
    print(f"error: {f'(rank {rank}) ' if rank else ''}{error_message(err)}", file=sys.stderr)
    return EXIT_USER_ERROR


def _escape_unencodable(*streams: Any) -> None:
    """Write what a stream cannot encode (e.g. the surrogates of a non-UTF-8 file name) as escapes."""
    for stream in streams:
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


class BarSafeHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``: open bars are cleared and redrawn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's contract: never raise from a handler
            self.handleError(record)


def setup_console(bars: bool) -> None:
    """Log INFO to stdout on rank 0 (WARNING elsewhere); per-step lines stay in log.txt."""
    _escape_unencodable(sys.stdout, sys.stderr)
    rank = int(os.environ.get("RANK", "0"))
    handler = BarSafeHandler(sys.stdout) if bars else logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(lambda record: not record.name.startswith(STEP_LOGGER))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_map_console", False)]
    handler._map_console = True
    root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _postfix_text(postfix: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in postfix.items())


class TqdmProgress:
    """A tqdm bar on stderr (for a terminal)."""

    def __init__(self, total: int, desc: str, initial: int = 0):
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, postfix: Optional[Mapping[str, Any]] = None) -> None:
        if postfix:
            self.bar.set_postfix_str(_postfix_text(postfix), refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class LogProgress:
    """Progress as log lines (for pipes and files): at most one per ``interval`` seconds, e.g.
    ``train: 45% 450/1000 [01:00<01:13, 7.50it/s, loss=0.4102]``, and a last one when the loop
    took longer than ``interval`` and its last count was not shown yet."""

    BAR_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, total: int, desc: str, initial: int = 0, interval: Optional[float] = None):
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.interval = progress_seconds() if interval is None else interval
        self.start = self.last = time.monotonic()
        self.shown = initial  # the count of the last line
        self.postfix: Dict[str, Any] = {}

    def update(self, n: int = 1, postfix: Optional[Mapping[str, Any]] = None) -> None:
        self.n += n
        if postfix:
            self.postfix = dict(postfix)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now)

    def close(self) -> None:
        now = time.monotonic()
        if now - self.start >= self.interval and self.n != self.shown:
            self._emit(now)

    def _emit(self, now: float) -> None:
        self.shown = self.n
        log.info(tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, initial=self.initial,
                                   postfix=_postfix_text(self.postfix), bar_format=self.BAR_FORMAT))


def progress_seconds() -> float:
    """Seconds between progress lines: ``$MAP_PROGRESS_SECONDS`` (default 30); ConfigError unless a
    number >= 0."""
    text = os.environ.get(PROGRESS_SECONDS_ENV, "30")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"${PROGRESS_SECONDS_ENV}={text!r}: expected a number of seconds >= 0 (default 30)")
    return seconds


def progress_factory(bars: bool) -> ProgressFactory:
    """tqdm bars for a terminal, log lines otherwise (``$MAP_PROGRESS_SECONDS`` checked now)."""
    if bars:
        return TqdmProgress
    progress_seconds()
    return LogProgress
