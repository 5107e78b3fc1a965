"""Load third-party pickles (dataset ``.dat`` / ``.pkl`` files) without running their code or
letting a small file make the loader build something huge.

``pickle.load`` calls whatever global a file names, so a downloaded pickle can execute anything.
``restricted_load`` only lets through plain containers, scalars and numeric numpy arrays, and it
caps what it builds:

- a length field that reaches past the end of the file is cut at the end (nothing is allocated
  for it; the load then fails as a truncated pickle);
- arrays and buffers whose size is an argument (``numpy.ndarray(shape)``, ``_reconstruct``,
  ``bytes(n)``, ``bytearray(n)``) draw on a budget of ``max_bytes`` (default: the file's size plus
  64 MiB), beyond which the load stops with :class:`PickleLimitError`;
- numpy states are checked before numpy reads them: object dtypes, which would make numpy read raw
  bytes as object pointers, are refused wherever they appear.

It runs on Python's pure-Python unpickler (``pickle._Unpickler``), whose opcodes can be checked
one at a time; every failure is a ``pickle.UnpicklingError`` naming the file.
"""
from __future__ import annotations

import builtins
import importlib
import io
import math
import os
import pickle
import struct
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple, Union

import numpy as np

SLACK_BYTES = 64 << 20  # what a pickle may build beyond its own size (default cap: file size + this)

_BUILTINS = {"list", "tuple", "dict", "set", "frozenset", "str", "int", "float", "bool", "complex",
             "bytes", "bytearray"}

# Protocol-2 pickles written by Python 3 store bytes as ``_codecs.encode(text, "latin1")``.
_LATIN1 = ("latin1", "latin-1", "iso-8859-1")

# what a garbled stream raises inside the unpickler (besides UnpicklingError)
_GARBLED = (EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError, struct.error)


class PickleLimitError(pickle.UnpicklingError):
    """The pickle asks to build more than the cap allows."""


def _numpy_core(module: str, name: str) -> Any:
    """``numpy.core.<module>.<name>`` under the installed numpy's spelling (numpy 2: ``numpy._core``)."""
    return getattr(importlib.import_module(f"numpy.{'_core' if hasattr(np, '_core') else 'core'}.{module}"), name)


_RECONSTRUCT = _numpy_core("multiarray", "_reconstruct")
_SCALAR = _numpy_core("multiarray", "scalar")
_FROMBUFFER = _numpy_core("numeric", "_frombuffer")  # arrays pickled with protocol 5


class _BoundedReader:
    """Reads of a binary file that stop at the end it had when loading began (``remaining`` bytes)."""

    def __init__(self, file: BinaryIO):
        self.file = file
        try:
            start = file.tell()
            self.remaining = file.seek(0, io.SEEK_END) - start
            file.seek(start)
        except (AttributeError, OSError, ValueError):  # not seekable: no end known
            self.remaining = math.inf

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.remaining:
            n = -1 if self.remaining == math.inf else int(self.remaining)
        data = self.file.read(n)
        self.remaining -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.file.readline(-1 if self.remaining == math.inf else int(self.remaining))
        self.remaining -= len(line)
        return line


def _size_of(shape: Any, dtype: np.dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    return math.prod(shape) * dtype.itemsize


class RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler that refuses every global outside containers, scalars and numeric numpy arrays,
    and caps the bytes that arguments may ask it to allocate (``max_bytes``)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, source: str, encoding: str = "ASCII", max_bytes: Optional[float] = None):
        self.reader = _BoundedReader(file)
        super().__init__(self.reader, encoding=encoding)
        self.source = source
        self.max_bytes = self.reader.remaining + SLACK_BYTES if max_bytes is None else max_bytes
        self.budget = self.max_bytes
        # the globals numpy pickles need (find_class reads ``numpy._core`` as ``numpy.core``) and the
        # builtins that take a size, each checked as it is called
        self.ndarray = self._ndarray  # one bound method: _reconstruct recognises it as its subtype
        self.allowed: Dict[Tuple[str, str], Callable[..., Any]] = {
            ("numpy", "ndarray"): self.ndarray,
            ("numpy", "dtype"): self._dtype,
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.multiarray", "scalar"): self._scalar,
            ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
            ("builtins", "bytes"): self._sized(bytes, lambda n=b"", *rest: n if isinstance(n, int) else 0),
            ("builtins", "bytearray"): self._sized(bytearray, lambda n=b"", *rest: n if isinstance(n, int) else 0),
            ("_codecs", "encode"): self._latin1_encode,
        }

    def refuse(self, why: str) -> pickle.UnpicklingError:
        return pickle.UnpicklingError(f"{self.source}: {why}")

    def charge(self, nbytes: int, what: str) -> None:
        """Take ``nbytes`` from the budget, or stop the load with PickleLimitError."""
        if nbytes > self.budget:
            raise PickleLimitError(
                f"{self.source}: the pickle asks for {nbytes:,} bytes ({what}), beyond the cap of "
                f"{self.max_bytes:,.0f} bytes for this file (its size plus {SLACK_BYTES >> 20} MiB); refused")
        self.budget -= nbytes

    def _sized(self, build: Callable[..., Any], size: Callable[..., int]) -> Callable[..., Any]:
        def checked(*args: Any) -> Any:
            self.charge(size(*args), f"{build.__name__}(...)")
            return build(*args)

        checked.__name__ = build.__name__
        return checked

    def _plain_dtype(self, dtype: np.dtype) -> np.dtype:
        if dtype.hasobject:
            raise self.refuse(f"refused an object dtype ({dtype}); only numeric arrays are allowed in data pickles")
        return dtype

    def _dtype(self, *args: Any) -> np.dtype:
        return self._plain_dtype(np.dtype(*args))

    def _ndarray(self, shape: Any, dtype: Any = float, *args: Any) -> np.ndarray:
        self.charge(_size_of(shape, self._dtype(dtype)), "numpy.ndarray(shape)")
        return np.ndarray(shape, dtype, *args)

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not self.ndarray:
            raise self.refuse(f"numpy _reconstruct of {subtype!r}; only numpy.ndarray is allowed")
        self.charge(_size_of(shape, self._dtype(dtype)), "numpy _reconstruct")
        return _RECONSTRUCT(np.ndarray, shape, dtype)

    def _scalar(self, dtype: np.dtype, *args: Any) -> Any:
        if not isinstance(dtype, np.dtype):
            raise self.refuse(f"a numpy scalar of {dtype!r}, which is not a dtype")
        return _SCALAR(self._plain_dtype(dtype), *args)

    def _latin1_encode(self, text: str, encoding: str = "utf-8", *rest: Any) -> bytes:
        if encoding.lower() not in _LATIN1:
            raise self.refuse(f"_codecs.encode with encoding {encoding!r}; only latin1 (Python 2 bytes) is allowed")
        return text.encode("latin1")

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module.replace("numpy._core", "numpy.core")
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "builtins" and name in _BUILTINS:
            return getattr(builtins, name)
        raise self.refuse(f"refused to load global '{module}.{name}'; only lists, tuples, dicts, sets, "
                          f"numbers, strings and numpy arrays are allowed in data pickles")

    def load_build(self) -> None:
        """BUILD with numpy's states checked: an array's dtype before numpy reads the data with it,
        a dtype after its state is set (the state's flags could make it an object dtype)."""
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            dtype = next((s for s in state if isinstance(s, np.dtype)), None) if isinstance(state, tuple) else None
            if dtype is None:
                raise self.refuse(f"an array state without a dtype: {type(state).__name__}")
            self._plain_dtype(dtype)
        pickle._Unpickler.load_build(self)
        if isinstance(inst, np.dtype):
            self._plain_dtype(inst)

    dispatch[pickle.BUILD[0]] = load_build

    def load_bytearray8(self) -> None:
        """BYTEARRAY8 allocates its length before reading: the length may not reach past the data."""
        size, = struct.unpack("<Q", self.read(8))
        frame = self._unframer.current_frame
        left = self.reader.remaining + (len(frame.getbuffer()) - frame.tell() if frame is not None else 0)
        if size > left:
            raise self.refuse(f"a bytearray of {size:,} bytes, longer than the rest of the file (truncated or forged)")
        data = bytearray(size)
        self.readinto(data)
        self.append(data)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load(self) -> Any:
        try:
            return super().load()
        except pickle.UnpicklingError as err:
            if str(err).startswith(self.source):
                raise
            raise self.refuse(f"not a readable pickle ({err})") from None
        except _GARBLED as err:
            raise self.refuse(f"not a readable pickle ({type(err).__name__}: {err})") from None


def restricted_load(path_or_file: Union[str, os.PathLike, BinaryIO], encoding: str = "ASCII",
                    max_bytes: Optional[float] = None) -> Any:
    """Unpickle a file with :class:`RestrictedUnpickler`.

    ``encoding`` is for Python 2 pickles (``"latin1"`` reads their numpy arrays correctly);
    ``max_bytes`` caps what arguments may ask to allocate (default: the file's size plus 64 MiB).
    Raises ``pickle.UnpicklingError`` (:class:`PickleLimitError` for the cap) naming the file.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return RestrictedUnpickler(f, os.fspath(path_or_file), encoding, max_bytes).load()
    source = str(getattr(path_or_file, "name", None) or "<stream>")
    return RestrictedUnpickler(path_or_file, source, encoding, max_bytes).load()
