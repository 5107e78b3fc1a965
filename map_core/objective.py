"""The pretraining objective as one unit: ``map``, ``mae`` or ``ar`` (config key ``model.objective``).

An objective fixes three things, for a sequence of ``num_tokens`` tokens in rows of ``row_len``
(one image row of patches; sqrt(G) point groups):

| objective | what the encoder sees | decoder attention | the loss covers |
| --- | --- | --- | --- |
| ``map`` | the visible tokens of a random mask | row-causal (a row sees itself and earlier rows) | the masked tokens |
| ``mae`` | the visible tokens of the same random mask | full (every token sees every token) | the masked tokens |
| ``ar`` | every token, row-causally: its output at row r depends on input rows <= r only | row-causal, over the latents shifted one row down | every token of rows 1..R-1 |

``ar`` is ARM-style next-row prediction, without masking. The encoder runs with
``causal=RowCausal(row_len)`` (:class:`RowCausal`, the one place this rule lives): sequence-bidirectional
Mamba mixers switch their backward scan off, attention blocks get its mask, and a modality's local
operators (the Mamba3D local pooling) take neighbours and statistics from rows <= r only. The decoder input at row
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
class RowCausal:
    """What ``ar`` asks of an encoder, as one unit: its output at row r (rows of ``row_len``
    consecutive tokens) depends on input rows <= r only. Every part that mixes tokens asks it:
    attention takes :meth:`attn_mask`, a Mamba mixer scans one way, and local operators use
    :meth:`nearest` and :meth:`cumulative_std` in place of their all-token versions."""

    row_len: int

    def attn_mask(self, length: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """bool (length, length), True = may attend (:func:`row_causal_mask`)."""
        return row_causal_mask(length, self.row_len, device)

    def nearest(self, coords: torch.Tensor, k: int) -> torch.Tensor:
        """The k nearest tokens of each token among those of its own and earlier rows.

        coords: (B, L, D) -> indices (B, L, k), nearest first (ties to the lower index). Needs
        k <= row_len (the first row has row_len candidates).
        """
        if k > self.row_len:
            raise ValueError(f"row-causal kNN: k={k} neighbours, but the first row has only {self.row_len} tokens")
        dist = ((coords.unsqueeze(2) - coords.unsqueeze(1)) ** 2).sum(-1)  # (B, L, L)
        dist = dist.masked_fill(~self.attn_mask(coords.shape[1], coords.device), float("inf"))
        return torch.sort(dist, dim=-1, stable=True).indices[..., :k]

    def cumulative_std(self, x: torch.Tensor) -> torch.Tensor:
        """Per row r, the unbiased std of every entry of ``x`` in rows <= r (over the whole batch).

        x: (B, L, ...) -> (1, L, 1, ...). For the last row it is ``x.std()``.
        """
        b, length = x.shape[:2]
        rows = length // self.row_len
        values = x.float().reshape(b, rows, -1).transpose(0, 1).reshape(rows, -1)
        count = torch.arange(1, rows + 1, device=x.device, dtype=torch.float32) * values.shape[1]
        total, squares = values.sum(1).cumsum(0), values.pow(2).sum(1).cumsum(0)
        var = (squares - total.pow(2) / count) / (count - 1)
        std = var.clamp_min(0).sqrt().repeat_interleave(self.row_len)
        return std.view(1, length, *[1] * (x.dim() - 2)).to(x.dtype)


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
    def uses_mask(self) -> bool:
        """True when the encoder sees a random subset (``map``, ``mae``); False for ``ar``."""
        return self.name != "ar"

    @property
    def encoder_causality(self) -> Optional[RowCausal]:
        """The rule the encoder runs under: :class:`RowCausal` for ``ar``, None (all tokens) else."""
        return RowCausal(self.row_len) if self.name == "ar" else None

    def sample_num_masked(self, generator: Optional[torch.Generator] = None) -> int:
        """How many tokens this step masks: one ratio per step (fixed, or drawn on the host)."""
        if not self.uses_mask:
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
