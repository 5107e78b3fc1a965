"""Load third-party pickles (dataset ``.dat`` / ``.pkl`` files) without running their code.

``pickle.load`` calls whatever global a file names, so a downloaded pickle can execute anything.
``restricted_load`` only lets through plain containers, scalars and numpy arrays.
"""
from __future__ import annotations

import builtins
import importlib
import os
import pickle
from typing import Any, BinaryIO, Union

_BUILTINS = {"list", "tuple", "dict", "set", "frozenset", "str", "int", "float", "bool", "complex",
             "bytes", "bytearray"}

# (module, name) of what numpy pickles need; numpy 2 spells ``numpy.core`` as ``numpy._core``.
_NUMPY = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
}
_NUMPY |= {(module.replace("numpy.core", "numpy._core"), name) for module, name in _NUMPY}

# Protocol-2 pickles written by Python 3 store bytes as ``_codecs.encode(text, "latin1")``.
_OTHER = {("_codecs", "encode")}


def _numpy_global(module: str, name: str) -> Any:
    """Import an allowed numpy global under whichever spelling the installed numpy has."""
    candidates = [module]
    if module.startswith("numpy.core"):
        candidates.insert(0, module.replace("numpy.core", "numpy._core"))
    elif module.startswith("numpy._core"):
        candidates.append(module.replace("numpy._core", "numpy.core"))
    for candidate in candidates:
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy global {module}.{name} is not available in this numpy")


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside containers, scalars and numpy arrays."""

    def __init__(self, file: BinaryIO, source: str, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if (module, name) in _NUMPY:
            return _numpy_global(module, name)
        if (module, name) in _OTHER:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self.source}: refused to load global '{module}.{name}'; only lists, tuples, dicts, sets, "
            f"numbers, strings and numpy arrays are allowed in data pickles")


def restricted_load(path_or_file: Union[str, os.PathLike, BinaryIO], encoding: str = "ASCII") -> Any:
    """Unpickle a file with :class:`RestrictedUnpickler`.

    ``encoding`` is for Python 2 pickles (``"latin1"`` reads their numpy arrays correctly).
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return RestrictedUnpickler(f, os.fspath(path_or_file), encoding).load()
    source = str(getattr(path_or_file, "name", None) or "<stream>")
    return RestrictedUnpickler(path_or_file, source, encoding).load()
