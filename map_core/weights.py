"""Loading checkpoint weights into a model: the one path for ``--finetune``, ``load_pretrained``
and the official-checkpoint converters.

1. :func:`extract_state_dict`: the state dict inside a checkpoint (``model`` / ``base_model`` /
   ``state_dict`` entry or bare tensors), wrapper prefixes removed (``module.`` of DDP,
   ``base_model.`` of the Mamba3D / Point-MAE runners; ``backbone.`` and ``encoder.`` too when
   the model's keys are known and stripping them fits the model at least as well).
2. The model's own renaming (:meth:`LoadsPretrained.adapt_pretrained`, built on
   :func:`rename_keys` and the modality's official-name function).
3. A shape-checked non-strict load; the :class:`LoadResult` lists loaded, missing, unexpected
   and skipped keys.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from map_core.errors import UserError

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("model", "base_model", "state_dict")  # where checkpoints keep the weights
# prefixes that wrappers put before every key: DDP, Mamba3D / Point-MAE runners, detection-style
# backbones, a model saved as the ``encoder`` of a bigger one
WRAPPER_PREFIXES = ("module.", "base_model.", "backbone.", "encoder.")
PURE_WRAPPERS = ("module.", "base_model.")  # never a module name here: stripped without the model's keys
SHOWN_KEYS = 10  # keys listed in an error message before "... and N more"

StateDict = Dict[str, torch.Tensor]
KeyRename = Callable[[str], Optional[str]]  # checkpoint key -> model key; None: drop it


class CheckpointShapeError(UserError, ValueError):
    """A checkpoint tensor does not fit the model (the message names every such key)."""


class CheckpointKeyError(UserError, KeyError):
    """A checkpoint key the model's renaming cannot place (the message names the key and the source)."""

    def __str__(self) -> str:
        return str(self.args[0])


class PartialLoadError(UserError):
    """A pretrained checkpoint filled too little of the model (the message names the key prefixes)."""


def _listing(lines: Sequence[str]) -> str:
    shown = "\n".join(lines[:SHOWN_KEYS])
    return shown + (f"\n  ... and {len(lines) - SHOWN_KEYS} more" if len(lines) > SHOWN_KEYS else "")


def _shape_lines(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    return [f"  {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state_dict.items() if k in own and own[k].shape != v.shape]


def check_shapes(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Raise CheckpointShapeError listing the keys whose checkpoint shape differs from the model's
    (``hint``, e.g. how the configs differ, ends the first line)."""
    bad = _shape_lines(model.state_dict(), state_dict)
    if bad:
        raise CheckpointShapeError(f"shape mismatch loading {source} ({len(bad)} keys){hint}\n" + _listing(bad))


def key_prefixes(keys: Iterable[str]) -> str:
    """``'encoder. (98), tokenizer. (12), cls_token'``: the first name of each key, with counts."""
    counts = Counter(k.split(".")[0] + ("." if "." in k else "") for k in keys)
    return ", ".join(f"{p} ({n})" if n > 1 else p for p, n in counts.most_common()) or "none"


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor],
                           model_keys: Optional[Collection[str]] = None) -> StateDict:
    """Remove a wrapper prefix (``WRAPPER_PREFIXES``) that every key carries, repeatedly.

    With ``model_keys``, a prefix goes only while the stripped keys match at least as many of them
    as before, so ``backbone.encoder.x`` loads as ``encoder.x`` while a checkpoint of our own
    ``encoder`` submodule (every key ``encoder.*``, as the model's) keeps its names. Without them,
    only ``PURE_WRAPPERS`` go.
    """
    model_keys = None if model_keys is None else set(model_keys)
    sd = dict(state_dict)
    while sd:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        stripped = {k[len(prefix):]: v for k, v in sd.items()}
        if model_keys is None:
            if prefix not in PURE_WRAPPERS:
                break
        elif len(model_keys & stripped.keys()) < len(model_keys & sd.keys()):
            break
        sd = stripped
    return sd


def extract_state_dict(checkpoint: Any, model_keys: Optional[Collection[str]] = None,
                       source: str = "checkpoint") -> StateDict:
    """The weights in ``checkpoint`` (``{"model" | "base_model" | "state_dict": sd, ...}`` or a bare
    state dict), wrapper prefixes stripped (:func:`strip_wrapper_prefixes`).

    Raises UserError naming ``source`` when no mapping of tensors is found.
    """
    if isinstance(checkpoint, Mapping):
        key = next((k for k in STATE_DICT_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
        if key is not None:
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = ", ".join(map(repr, list(checkpoint)[:SHOWN_KEYS])) if isinstance(checkpoint, Mapping) \
            else type(checkpoint).__name__
        raise UserError(f"no state dict found in {source} (looked for {', '.join(STATE_DICT_KEYS)} "
                        f"or bare tensors; found {found})")
    return strip_wrapper_prefixes(checkpoint, model_keys)


def rename_keys(state_dict: Mapping[str, torch.Tensor], rename: KeyRename,
                source: str = "checkpoint") -> Tuple[StateDict, List[str]]:
    """Apply a modality's key renaming to every key; returns (renamed state dict, dropped keys).

    ``rename(key)`` gives the new name, or None to drop the key (e.g. an official parameter the
    model does not have); the dropped keys are logged. A KeyError from ``rename`` (a key it cannot
    place) and two keys renamed to one name raise CheckpointKeyError naming ``source``.
    """
    out: StateDict = {}
    dropped: List[str] = []
    for key, value in state_dict.items():
        try:
            new = rename(key)
        except KeyError as err:
            raise CheckpointKeyError(f"{source}: {err.args[0] if err.args else key}") from None
        if new is None:
            dropped.append(key)
        elif new in out:
            raise CheckpointKeyError(f"{source}: two checkpoint keys map to '{new}' (the second: '{key}')")
        else:
            out[new] = value
    if dropped:
        log.info("%s: dropped %d parameters the model does not have: %s", source, len(dropped),
                 ", ".join(sorted(dropped)))
    return out, dropped


def rename_prefix(key: str, renames: Sequence[Tuple[str, str]]) -> Optional[str]:
    """``key`` with the first matching ``(old, new)`` prefix of ``renames`` replaced by ``new``; an
    ``old`` not ending in ``.`` matches only that exact key. None when none matches."""
    for old, new in renames:
        if key.startswith(old) if old.endswith(".") else key == old:
            return new + key[len(old):]
    return None


@dataclass
class LoadResult:
    """What :func:`load_weights` did. Model keys, except ``skipped_keys`` (the checkpoint's)."""

    loaded_keys: List[str]      # model tensors filled from the checkpoint
    missing_keys: List[str]     # model tensors the checkpoint lacks (kept at init)
    unexpected_keys: List[str]  # checkpoint tensors (renamed) the model lacks (ignored)
    skipped_keys: List[str]     # checkpoint tensors the model's renaming dropped on purpose

    @property
    def checkpoint_keys(self) -> List[str]:
        """Every key the checkpoint had, after the model's renaming (dropped ones as they were)."""
        return self.loaded_keys + self.unexpected_keys + self.skipped_keys


class LoadsPretrained:
    """Mixin for an ``nn.Module`` that takes pretrained checkpoints: ``load_pretrained`` is
    :func:`load_weights`; a model overrides only ``adapt_pretrained`` (its key renaming)."""

    def adapt_pretrained(self, state_dict: StateDict, source: str) -> Tuple[StateDict, List[str]]:
        """Checkpoint names -> this model's names; returns (state dict, dropped checkpoint keys).
        ``source`` names the checkpoint in errors and logs (:func:`rename_keys`)."""
        return state_dict, []

    def load_pretrained(self, checkpoint: Any, source: str = "load_pretrained") -> LoadResult:
        """Load ours or an official checkpoint (or a bare state dict) non-strictly; see :func:`load_weights`."""
        return load_weights(self, checkpoint, source)


def load_weights(model: nn.Module, checkpoint: Any, source: str = "checkpoint", hint: str = "") -> LoadResult:
    """Unwrap ``checkpoint`` (:func:`extract_state_dict` with the model's keys), rename it with the
    model's ``adapt_pretrained`` (a :class:`LoadsPretrained` model), check shapes, load non-strictly.

    A tensor of another shape raises CheckpointShapeError naming ``source``, the keys and ``hint``.
    The caller reports or refuses missing and unexpected keys.
    """
    own = model.state_dict()
    state_dict = extract_state_dict(checkpoint, own.keys(), source)
    skipped: List[str] = []
    if isinstance(model, LoadsPretrained):
        state_dict, skipped = model.adapt_pretrained(state_dict, source)
    check_shapes(model, state_dict, source, hint)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    absent = set(missing)
    return LoadResult([k for k in own if k not in absent], list(missing), list(unexpected), list(skipped))


@dataclass
class Coverage:
    """How much of a model a (non-strict) load filled: state-dict tensors, all and in the encoder."""

    filled: int
    total: int
    encoder_filled: int
    encoder_total: int

    @classmethod
    def of(cls, model: nn.Module, missing_keys: Iterable[str]) -> "Coverage":
        """Encoder = keys under ``model.encoder`` when the model has one, else every key."""
        keys, missing = list(model.state_dict()), set(missing_keys)
        prefix = "encoder." if isinstance(getattr(model, "encoder", None), nn.Module) else ""
        encoder = [k for k in keys if k.startswith(prefix)]
        return cls(sum(k not in missing for k in keys), len(keys),
                   sum(k not in missing for k in encoder), len(encoder))

    def __str__(self) -> str:
        return f"{self.filled} of {self.total} model tensors (encoder: {self.encoder_filled} of {self.encoder_total})"

    @property
    def enough(self) -> bool:
        """At least half of the encoder's tensors came from the checkpoint."""
        return 2 * self.encoder_filled >= self.encoder_total and self.encoder_filled > 0


def require_coverage(coverage: Coverage, source: str, checkpoint_keys: Iterable[str], model: nn.Module) -> None:
    """Raise PartialLoadError when ``coverage`` is not ``enough``; the message names the key prefixes."""
    if coverage.enough:
        return
    raise PartialLoadError(
        f"{source} filled only {coverage}; the checkpoint's keys start with {key_prefixes(checkpoint_keys)}, "
        f"the model's with {key_prefixes(model.state_dict())}. Is it a checkpoint of this kind of model? "
        f"To keep such a partial load on purpose, pass --allow-partial-load")


def load_exact(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Load every tensor of ``model`` from ``state_dict`` (strict). Keys or shapes that differ raise
    CheckpointShapeError: a first line with the counts and ``hint`` (e.g. how the configs differ),
    then the keys."""
    own = model.state_dict()
    shapes = _shape_lines(own, state_dict)
    missing = [f"  missing: {k}" for k in own if k not in state_dict]
    unexpected = [f"  unexpected: {k}" for k in state_dict if k not in own]
    if shapes or missing or unexpected:
        counts = ", ".join(f"{len(keys)} {what}" for keys, what in ((shapes, "tensors of another shape"),
                           (missing, "missing tensors"), (unexpected, "unexpected tensors")) if keys)
        raise CheckpointShapeError(
            f"{source} does not fit the model ({counts}){hint}\n" + _listing(shapes + missing + unexpected)
            + f"\n  (checkpoint keys start with {key_prefixes(state_dict)}; the model's with {key_prefixes(own)})")
    model.load_state_dict(state_dict)
