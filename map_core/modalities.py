"""Modalities as plug-ins: what the tools need to know about a kind of input, found from the model.

A modality package (``image``, ``pointcloud``, or a new one such as depth maps) registers its
models, datasets and tasks in ``map_core.registry`` when imported, and one :class:`Modality` here:
its name (as ``--input NAME:SIZE`` spells it), how to make a random example input, and its
visualiser. :func:`load_modalities` imports every package beside ``map_core`` that holds a
``modality.py`` (and those named in ``$MAP_MODALITIES``); the tools then find the modality of a
registered model with :func:`modality_of`, so a new modality touches no tool.

What a modality adds to the engine it registers there: its ops as backends (``map_core.backends``)
and a protocol that turns one run into folds (``map_core.engine.schema.register_fold_protocol``).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from map_core.errors import ConfigError
from map_core.registry import MODELS, closest

MODALITY_FILE = "modality.py"
MODALITY_ENV = "MAP_MODALITIES"  # extra modality modules, comma-separated (packages outside this folder)

Draw = Callable[[Sequence[int], Path], None]  # (dataset indices, PNG path) -> the picture saved there


@dataclass(frozen=True)
class Modality:
    """One kind of input, as the tools see it.

    ``example_input(batch, size, device)``: a random model input, e.g. images (B, 3, size, size);
    ``default_size`` is the size when none is given. ``visualizer(model, dataset)`` returns a
    :data:`Draw` for that model and dataset, or None when it has no picture for them;
    ``drawable`` says what it can draw, for the error message then. Registered models belong to
    the modality when their builder was defined in ``package`` (or a submodule of it), or when the
    builder has a ``modality`` attribute naming it.
    """

    name: str
    package: str
    example_input: Callable[[int, int, torch.device], torch.Tensor]
    default_size: int
    visualizer: Optional[Callable[[nn.Module, Any], Optional[Draw]]] = None
    drawable: str = "a MAP pretraining model"


MODALITIES: Dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Add ``modality`` (again from the same package: replaced, e.g. on a module reload)."""
    known = MODALITIES.get(modality.name)
    if known is not None and known.package != modality.package:
        raise KeyError(f"modality '{modality.name}' is registered twice (by '{known.package}' and "
                       f"'{modality.package}')")
    MODALITIES[modality.name] = modality
    return modality


def _registered() -> str:
    return ", ".join(f"{m.name} ({m.package})" for m in MODALITIES.values()) or "none"


def get_modality(name: str) -> Modality:
    """The modality called ``name``; a ConfigError names the registered ones."""
    if name not in MODALITIES:
        hint = closest(name, MODALITIES)
        raise ConfigError(f"unknown modality '{name}'" + (f"; did you mean '{hint}'?" if hint else "")
                          + f" (registered: {_registered()})")
    return MODALITIES[name]


def modality_of(model: Any) -> Modality:
    """The modality of a registered model name, a model builder or class, or a model instance: the
    one its ``modality`` attribute names, else the one whose package defined it."""
    what = f"model '{model}'" if isinstance(model, str) else repr(getattr(model, "__name__", type(model).__name__))
    if isinstance(model, str):
        try:
            model = MODELS.get(model)
        except KeyError as err:
            raise ConfigError(err.args[0]) from None
    explicit = getattr(model, "modality", None)
    if isinstance(explicit, str):
        return get_modality(explicit)
    module = getattr(model, "__module__", None) or ""
    owners = [m for m in MODALITIES.values() if module == m.package or module.startswith(m.package + ".")]
    if not owners:
        raise ConfigError(f"{what} (defined in module '{module}') belongs to no registered modality "
                          f"(registered: {_registered()}); its package registers one with "
                          f"map_core.modalities.register_modality, or the builder names one in a "
                          f"'modality' attribute")
    return max(owners, key=lambda m: len(m.package))


def modality_modules(root: Optional[Path] = None) -> List[str]:
    """The ``<package>.modality`` modules of the packages in ``root`` (default: the folder holding
    ``map_core``) that have one, sorted, then the modules named in ``$MAP_MODALITIES``."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    found = sorted(p.parent.name for p in root.glob(f"*/{MODALITY_FILE}") if (p.parent / "__init__.py").is_file())
    extra = [name.strip() for name in os.environ.get(MODALITY_ENV, "").split(",") if name.strip()]
    return [f"{name}.{Path(MODALITY_FILE).stem}" for name in found] + [n for n in extra if n not in found]


def load_modalities(root: Optional[Path] = None) -> Dict[str, Modality]:
    """Import every modality (see :func:`modality_modules`): each registers its models, datasets,
    tasks and :class:`Modality`. Returns the registered modalities by name."""
    for name in modality_modules(root):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if name.startswith(str(err.name)):  # the module itself is missing, not one it imports
                raise ConfigError(f"${MODALITY_ENV} names '{name}', which cannot be imported ({err})") from None
            raise
    return dict(MODALITIES)
