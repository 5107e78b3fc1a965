"""The pretraining objective as one unit: ``map``, ``mae`` or ``ar`` (config key ``model.objective``).

An objective fixes three things, for a sequence of ``num_tokens`` tokens in rows of ``row_len``
(one image row of patches; sqrt(G) point groups):

| objective | what the encoder sees | decoder attention | the loss covers |
| --- | --- | --- | --- |
| ``map`` | the visible tokens of a random mask | row-causal (a row sees itself and earlier rows) | the masked tokens |
| ``mae`` | the visible tokens of the same random mask | full (every token sees every token) | the masked tokens |
| ``ar`` | every token, row-causally: its output at row r depends on input rows <= r only | row-causal, over the latents shifted one row down | every token of rows 1..R-1 |

``ar`` is ARM-style next-row prediction, without masking. The encoder runs with
``causal_row_len=row_len``: sequence-bidirectional Mamba mixers switch their backward scan off,
attention blocks get the row-causal mask, and the Mamba3D local pooling takes neighbours from rows
<= r and normalises by the spread of rows <= r (see ``pointcloud.blocks``). The decoder input at row
r is the latent of row r - 1 (row 0 holds mask tokens), plus the decoder position of row r, so with
the row-causal decoder mask the prediction of row r is a function of the tokens of rows < r and of
the positions of row r (where to predict: patch positions, group centres, as for the masked tokens
of ``map`` / ``mae``). Row 0 has no earlier row and is left out of the loss. Caveat: in training mode, batch
statistics (the point tokeniser's BatchNorm) mix every token of the batch, as they do for the
masked groups of Point-MAE; in evaluation mode the dependence is exactly row-causal.

Masks are bool tensors (B, L); for ``sample_mask`` True = hidden from the encoder. Both ``map`` and
``mae`` draw the mask ratio as MAP does: fixed ``mask_ratio`` when ``mask_ratio_std == 0``, else one
ratio per step from a normal(mask_ratio, mask_ratio_std) truncated to ``mask_ratio_bounds``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .errors import ConfigError
from .masking import num_masked, random_mask_of_count, truncated_normal_ratio

OBJECTIVES = ("map", "mae", "ar")


def row_causal_mask(length: int, row_len: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """bool (length, length): entry [q, k] is True when query q may attend to key k,
    i.e. ``k // row_len <= q // row_len``."""
    if row_len <= 0:
        raise ValueError(f"row_len must be positive, got {row_len}")
    row = torch.arange(length, device=device) // row_len
    return row[None, :] <= row[:, None]


@dataclass(frozen=True)
class Objective:
    """Which tokens the encoder sees, what the decoder may attend to, which tokens the loss covers.

    Built by a model factory from its config keys (``objective``, ``mask_ratio``, ...); a setting
    that cannot train (a ratio masking no token or every token, a single row for ``ar``) is a
    :class:`ConfigError` naming the key.
    """

    name: str
    num_tokens: int
    row_len: int
    mask_ratio: float = 0.5
    mask_ratio_std: float = 0.0
    mask_ratio_bounds: Tuple[float, float] = (0.3, 0.7)
    mask_rounding: str = "ceil"

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"model.objective: expected one of {', '.join(OBJECTIVES)}, got {self.name!r}")
        if self.row_len <= 0 or self.num_tokens % self.row_len:
            raise ValueError(f"{self.num_tokens} tokens do not split into rows of {self.row_len}")
        if self.name == "ar":
            if self.num_rows < 2:
                raise ConfigError(f"model.objective: 'ar' predicts each row from the rows before it and "
                                  f"needs at least 2 rows; this model has {self.num_rows}")
            return
        drawn = ((self.mask_ratio, "model.mask_ratio"),) if self.mask_ratio_std == 0 else (
            (self.mask_ratio_bounds[0], "model.mask_ratio_bounds"),
            (self.mask_ratio_bounds[1], "model.mask_ratio_bounds"))
        for ratio, key in drawn:
            try:
                n = num_masked(self.num_tokens, ratio, self.mask_rounding)
            except ValueError as err:
                raise ConfigError(f"{key}: {err}") from None
            if n == 0 or n == self.num_tokens:
                what = "none" if n == 0 else "all"
                raise ConfigError(
                    f"{key}={ratio} masks {what} of the {self.num_tokens} tokens ({self.mask_rounding} "
                    f"rounding); objective '{self.name}' needs at least one masked and one visible token "
                    f"(for no masking use model.objective=ar)")

    @property
    def num_rows(self) -> int:
        return self.num_tokens // self.row_len

    @property
    def masks(self) -> bool:
        """True when the encoder sees a random subset (``map``, ``mae``); False for ``ar``."""
        return self.name != "ar"

    @property
    def encoder_row_len(self) -> Optional[int]:
        """The ``causal_row_len`` the encoder runs with: ``row_len`` for ``ar``, else None."""
        return self.row_len if self.name == "ar" else None

    def sample_num_masked(self, generator: Optional[torch.Generator] = None) -> int:
        """How many tokens this step masks: one ratio per step (fixed, or drawn on the host)."""
        if not self.masks:
            raise ValueError(f"objective '{self.name}' does not mask tokens")
        ratio = self.mask_ratio
        if self.mask_ratio_std > 0:
            ratio = truncated_normal_ratio(self.mask_ratio, self.mask_ratio_std, *self.mask_ratio_bounds,
                                           generator=generator)
        return num_masked(self.num_tokens, ratio, self.mask_rounding)

    def mask_of_count(self, batch: int, n_mask: int, device: Optional[torch.device] = None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """bool (batch, num_tokens) with ``n_mask`` True (hidden from the encoder) per row, drawn on
        ``device``."""
        return random_mask_of_count(batch, self.num_tokens, n_mask, generator=generator, device=device)

    def sample_mask(self, batch: int, device: Optional[torch.device] = None,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """bool (batch, num_tokens), True = hidden from the encoder; one ratio for the whole batch."""
        return self.mask_of_count(batch, self.sample_num_masked(generator), device, generator)

    def decoder_mask(self, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        """bool (L, L) attention mask of the decoder (True = may attend), or None for full attention."""
        if self.name == "mae":
            return None
        return row_causal_mask(self.num_tokens, self.row_len, device)

    def predicted_rows(self, batch: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """``ar``: bool (batch, num_tokens), True for the tokens the loss covers (rows 1..R-1)."""
        rows = torch.arange(self.num_tokens, device=device) // self.row_len
        return (rows >= 1).expand(batch, -1)
