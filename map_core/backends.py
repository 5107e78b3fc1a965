"""One small registry of implementations per op, chosen once per process.

Ops: ``scan`` (selective scan), ``conv`` (depthwise causal conv1d + SiLU), ``fps`` and ``knn``.
Each op module registers its implementations (``register``); the engine sets the choice from the
config's ``runtime.backends`` (``configure``) and every call site asks ``get(op, device)``. Models
never carry a backend argument.

``auto`` takes the first registered ``auto`` backend that runs on the tensors' device and whose
package is importable (the project's Triton kernels on CUDA), else the reference ``torch``
implementation. Optional third-party packages (``mamba_ssm``, ``causal_conv1d``, ``pointnet2_ops``,
``knn_cuda``) are used only when named; naming one that is missing, or one that cannot run on
the tensors' device, is an error, never a silent fallback. Triton kernels also run on CPU tensors
under ``TRITON_INTERPRET=1`` (the test suite checks them that way).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, fields, replace
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendsConfig:
    """``runtime.backends:``; per op ``auto`` or the name of a registered backend."""

    scan: str = "auto"
    conv: str = "auto"
    fps: str = "auto"
    knn: str = "auto"


OPS = tuple(f.name for f in fields(BackendsConfig))


@dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    ``fn``: the implementation, or ``"module:attribute"`` imported on first use (so a kernel module
    and its package load only when chosen); ``package``: the module it needs (None: always
    importable); ``devices``: device types it accepts (None: any); ``auto``: whether ``auto`` may pick it;
    ``interpretable``: a Triton kernel that also runs on CPU tensors under ``TRITON_INTERPRET=1``.
    """

    name: str
    fn: Union[Callable, str]
    package: Optional[str] = None
    devices: Optional[Tuple[str, ...]] = ("cuda",)
    auto: bool = False
    interpretable: bool = False
    installed: bool = True  # whether ``package`` can be imported, looked up once at registration

    def runs_natively_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices

    def runs_on(self, device_type: str) -> bool:
        return self.runs_natively_on(device_type) or (
            self.interpretable and device_type == "cpu" and triton_interpreted())


_REGISTRY: Dict[str, Dict[str, Backend]] = {op: {} for op in OPS}
_CHOICE: Dict[str, str] = {op: "auto" for op in OPS}
_RESOLVED: Dict[Tuple[str, str, str], Backend] = {}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # a missing parent package
        return False


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def register(op: str, name: str, fn: Union[Callable, str], *, package: Optional[str] = None,
             devices: Optional[Tuple[str, ...]] = ("cuda",), auto: bool = False,
             interpretable: bool = False) -> None:
    """Add implementation ``name`` of ``op``. Registration order is ``auto``'s preference order."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op '{op}'; expected one of {OPS}")
    _REGISTRY[op][name] = Backend(name, fn, package, None if devices is None else tuple(devices), auto,
                                  interpretable, package is None or _importable(package))
    _RESOLVED.clear()


def names(op: str) -> Tuple[str, ...]:
    """``auto`` and every registered backend of ``op``."""
    return ("auto",) + tuple(_REGISTRY[op])


def _check_name(op: str, name: str, where: str) -> None:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op '{op}' in {where}; expected one of {OPS}")
    if name != "auto" and name not in _REGISTRY[op]:
        raise ValueError(f"unknown {op} backend '{name}' in {where}; expected one of {', '.join(names(op))}")


def configure(choices: Mapping[str, str], where: str = "runtime.backends") -> None:
    """Set the process-wide choice per op (``{"scan": "auto", "fps": "torch", ...}``).

    A named backend whose package is missing is an error here, at start, not at the first step.
    """
    for op, name in choices.items():
        _check_name(op, name, f"{where}.{op}")
        if name != "auto" and not _REGISTRY[op][name].installed:
            raise ImportError(f"{where}.{op}: backend '{name}' needs the package "
                              f"'{_REGISTRY[op][name].package}', which is not installed; use 'auto' or 'torch'")
    _CHOICE.update(choices)
    _RESOLVED.clear()


def choices() -> Dict[str, str]:
    """The current choice per op (a copy)."""
    return dict(_CHOICE)


@contextlib.contextmanager
def using(**ops: str) -> Iterator[None]:
    """Temporarily choose backends, e.g. ``with using(scan="torch"): ...``."""
    before = choices()
    configure(ops, where="backends.using")
    try:
        yield
    finally:
        _CHOICE.clear()
        _CHOICE.update(before)
        _RESOLVED.clear()


def resolve(op: str, device: torch.device, name: Optional[str] = None) -> Backend:
    """The backend of ``op`` for tensors on ``device``: ``name`` if given, else the configured one."""
    name = _CHOICE[op] if name is None else name
    key = (op, name, device.type)
    hit = _RESOLVED.get(key)
    if hit is not None:
        return hit
    _check_name(op, name, f"the {op} call")
    if name == "auto":
        # never the interpreter: auto on CPU is the reference
        candidates = [b for b in _REGISTRY[op].values()
                      if b.auto and b.runs_natively_on(device.type) and b.installed]
        backend = candidates[0] if candidates else _REGISTRY[op]["torch"]
    else:
        backend = _REGISTRY[op][name]
        if not backend.installed:
            raise ImportError(f"{op} backend '{name}' needs the package '{backend.package}', which is not "
                              f"installed; use 'auto' or 'torch'")
        if not backend.runs_on(device.type):
            hint = " (or set TRITON_INTERPRET=1 to run the Triton kernel on CPU tensors)" if backend.interpretable else ""
            raise ValueError(f"{op} backend '{name}' runs on {'/'.join(backend.devices)} tensors, got tensors on "
                             f"{device.type}{hint}")
    if isinstance(backend.fn, str):
        module, _, attr = backend.fn.partition(":")
        backend = replace(backend, fn=getattr(importlib.import_module(module), attr))
    log.info("%s backend on %s: %s", op, device.type, backend.name)
    _RESOLVED[key] = backend
    return backend


def get(op: str, device: torch.device, name: Optional[str] = None) -> Callable:
    """The implementation of ``op`` to call for tensors on ``device`` (see ``resolve``)."""
    return resolve(op, device, name).fn


def resolve_all(device: torch.device) -> None:
    """Resolve (and log) every registered op for ``device`` now, e.g. before ``torch.compile``
    traces the model, so tracing only reads the cache."""
    for op, registered in _REGISTRY.items():
        if registered:
            resolve(op, device)
