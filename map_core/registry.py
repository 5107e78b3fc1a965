"""Name -> builder registries, so configs can say ``NAME: something`` and code stays decoupled.

A registry maps a name to a callable (class or factory function). ``build(cfg)`` pops ``NAME`` from
a config mapping and calls the builder with the remaining keys, after checking every key against
the builder's signature, so a misspelt key fails with the closest valid name.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Iterable, Mapping, Optional


def closest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate most similar to ``name`` (or None when nothing is close)."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return match[0] if match else None


def accepted_keys(fn: Callable) -> Optional[set]:
    """Keyword names ``fn`` accepts, or None if it takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str) -> None:
    """Raise a KeyError naming ``where`` and the closest valid key for every unknown key."""
    keys = accepted_keys(fn)
    if keys is None:
        return
    for key in kwargs:
        if key not in keys:
            hint = closest(key, keys)
            raise KeyError(
                f"unknown key '{key}' in {where}"
                + (f"; did you mean '{hint}'?" if hint else "")
                + f" (valid keys: {', '.join(sorted(keys))})"
            )


class Registry:
    """A named table of builders."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable] = {}

    def register(self, name: Optional[str] = None, fn: Optional[Callable] = None):
        """Register ``fn`` under ``name`` (defaults to ``fn.__name__``); usable as a decorator."""

        def add(f: Callable) -> Callable:
            key = name or f.__name__
            if key in self._items and self._items[key] is not f:
                raise KeyError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> Callable:
        if name not in self._items:
            hint = closest(name, self._items)
            raise KeyError(
                f"unknown {self.kind} '{name}'"
                + (f"; did you mean '{hint}'?" if hint else "")
                + f" (registered: {', '.join(sorted(self._items)) or 'none'})"
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list:
        return sorted(self._items)

    def build(self, cfg: Mapping[str, Any], where: str = "", **extra: Any) -> Any:
        """Build from a mapping with a ``NAME`` key; other keys (and ``extra``) are keyword args."""
        if "NAME" not in cfg:
            raise KeyError(f"{where or self.kind} needs a 'NAME' key naming a registered {self.kind}")
        kwargs = {k: v for k, v in cfg.items() if k != "NAME"}
        kwargs.update(extra)
        fn = self.get(cfg["NAME"])
        check_kwargs(fn, kwargs, where or f"{self.kind} '{cfg['NAME']}'")
        return fn(**kwargs)


MODELS = Registry("model")
DATASETS = Registry("dataset")
TASKS = Registry("task")
