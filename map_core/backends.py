"""One small registry of implementations per op, chosen once per process.

An op exists once a module registers an implementation of it (``register``): ``map_core.ssm``
registers ``scan`` (selective scan) and ``conv`` (depthwise causal conv1d + SiLU), a modality the
ops it owns. The engine sets the choice from the config's ``runtime.backends`` (one key per
registered op, :func:`configure`) and every call site asks ``get(op, device)``. Models never carry
a backend argument.

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
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch

log = logging.getLogger(__name__)


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


_REGISTRY: Dict[str, Dict[str, Backend]] = {}  # op -> name -> backend, in registration order
_CHOICE: Dict[str, str] = {}  # op -> configured name; ops left out are "auto"
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
    """Add implementation ``name`` of ``op`` (the op's first registration creates it; every op needs
    a ``torch`` reference). Registration order is ``auto``'s preference order."""
    _REGISTRY.setdefault(op, {})[name] = Backend(name, fn, package, None if devices is None else tuple(devices), auto,
                                  interpretable, package is None or _importable(package))
    _RESOLVED.clear()


def ops() -> Tuple[str, ...]:
    """Every registered op, in registration order."""
    return tuple(_REGISTRY)


def names(op: str) -> Tuple[str, ...]:
    """``auto`` and every registered backend of ``op``."""
    return ("auto",) + tuple(_REGISTRY[op])


def _check_name(op: str, name: str, where: str) -> None:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op '{op}' in {where}; expected one of {', '.join(ops())}")
    if name != "auto" and name not in _REGISTRY[op]:
        raise ValueError(f"unknown {op} backend '{name}' in {where}; expected one of {', '.join(names(op))}")


def configure(choices: Mapping[str, str], where: str = "runtime.backends",
              device: Optional[torch.device] = None) -> None:
    """Set the process-wide choice per op (``{"scan": "auto", "conv": "torch", ...}``).

    A named backend whose package is missing, or (given the run's ``device``) that cannot run
    there, is an error here, at start, not at the first step.
    """
    for op, name in choices.items():
        _check_name(op, name, f"{where}.{op}")
        backend = _REGISTRY[op].get(name)
        if backend is None:
            continue
        if not backend.installed:
            raise ImportError(f"{where}.{op}: backend '{name}' needs the package "
                              f"'{backend.package}', which is not installed; use 'auto' or 'torch'")
        if device is not None and not backend.runs_on(device.type):
            raise ValueError(f"{where}.{op}: backend '{name}' runs on {'/'.join(backend.devices)} tensors and this "
                             f"run is on {device.type}; use 'auto' or 'torch'{_interpreter_hint(backend)}")
    _CHOICE.update(choices)
    _RESOLVED.clear()


def choices() -> Dict[str, str]:
    """The current choice per registered op."""
    return {op: _CHOICE.get(op, "auto") for op in _REGISTRY}


@contextlib.contextmanager
def using(**chosen: str) -> Iterator[None]:
    """Temporarily choose backends, e.g. ``with using(scan="torch"): ...``."""
    before = choices()
    configure(chosen, where="backends.using")
    try:
        yield
    finally:
        _CHOICE.clear()
        _CHOICE.update(before)
        _RESOLVED.clear()


def _interpreter_hint(backend: Backend) -> str:
    return " (or set TRITON_INTERPRET=1 to run the Triton kernel on CPU tensors)" if backend.interpretable else ""


def resolve(op: str, device: torch.device, name: Optional[str] = None) -> Backend:
    """The backend of ``op`` for tensors on ``device``: ``name`` if given, else the configured one."""
    name = _CHOICE.get(op, "auto") if name is None else name
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
            raise ValueError(f"{op} backend '{name}' runs on {'/'.join(backend.devices)} tensors, got tensors on "
                             f"{device.type}{_interpreter_hint(backend)}")
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
    for op in _REGISTRY:
        resolve(op, device)
