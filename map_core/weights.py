"""Loading weights into a model whose keys may only partly match (pretrained -> finetuned)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence

import torch
import torch.nn as nn

from map_core.errors import UserError

# prefixes that wrappers put before every key: DDP, Mamba3D / Point-MAE runners, detection-style
# backbones, a model saved as the ``encoder`` of a bigger one
WRAPPER_PREFIXES = ("module.", "base_model.", "backbone.", "encoder.")
SHOWN_KEYS = 10  # keys listed in an error message before "... and N more"


class CheckpointShapeError(UserError, ValueError):
    """A checkpoint tensor does not fit the model (the message names every such key)."""


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


def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"):
    """Shape-check, then load non-strictly; returns torch's (missing_keys, unexpected_keys).

    The caller (the engine) reports the missing and unexpected keys.
    """
    check_shapes(model, state_dict, source)
    return model.load_state_dict(state_dict, strict=False)


def key_prefixes(keys: Iterable[str]) -> str:
    """``'encoder. (98), tokenizer. (12), cls_token'``: the first name of each key, with counts."""
    counts = Counter(k.split(".")[0] + ("." if "." in k else "") for k in keys)
    return ", ".join(f"{p} ({n})" if n > 1 else p for p, n in counts.most_common()) or "none"


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor],
                           model_keys: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Remove a wrapper prefix (``WRAPPER_PREFIXES``) that every key carries, repeatedly, as long as
    the stripped keys match at least as many of ``model_keys`` as before.

    So ``backbone.encoder.x`` loads as ``encoder.x``, while a checkpoint of our own ``encoder``
    submodule (every key ``encoder.*``, as the model's) keeps its names.
    """
    model_keys = set(model_keys)
    sd = dict(state_dict)
    while sd:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        stripped = {k[len(prefix):]: v for k, v in sd.items()}
        if len(model_keys & stripped.keys()) < len(model_keys & sd.keys()):
            break
        sd = stripped
    return sd


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
