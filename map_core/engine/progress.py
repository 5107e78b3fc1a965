"""Progress hooks: the engine reports how far a loop is, the entry point draws it (or not).

A ``ProgressFactory`` is called as ``factory(total, desc, initial=0)`` and returns a
:class:`Progress`. The engine asks for one over the training steps, each evaluation, voting and
feature pass, and the folds of a fold protocol; ``tools/cli.py`` supplies tqdm bars for a terminal and
periodic log lines otherwise. Without a factory nothing is drawn.
"""
from __future__ import annotations

import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Protocol


class Progress(Protocol):
    def update(self, n: int = 1, postfix: Optional[Mapping[str, Any]] = None) -> None:
        """``n`` more items done; ``postfix`` (e.g. the loss) is shown beside the count."""

    def close(self) -> None:
        """The loop ended (or was interrupted)."""


ProgressFactory = Callable[..., Progress]


def tracked(items: Iterable, factory: Optional[ProgressFactory], desc: str) -> Iterator:
    """Yield ``items`` (a sized iterable, e.g. a DataLoader), reporting each one to a new progress."""
    if factory is None:
        yield from items
        return
    progress = factory(len(items), desc)
    try:
        for item in items:
            yield item
            progress.update(1)
    finally:
        progress.close()


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (whole seconds)."""
    return str(datetime.timedelta(seconds=max(0, round(seconds))))
