"""The modality-free MAP pretraining module: mask -> encode visible -> decode row by row -> loss.

A modality supplies four parts:

- ``tokenizer(inputs) -> Tokens``: token features, encoder positions, token coordinates and the
  per-token reconstruction target (image patches, point groups);
- ``encoder(x, pos, coords) -> (B, L_keep, C)`` run on the visible tokens only;
- ``decoder_pos(coords) -> (B or 1, L, C_dec)``: the decoder's position embedding;
- ``head`` (C_dec -> P) and ``loss_fn(pred, target)`` on the masked tokens.

``decoder_order`` says how the decoder sees the sequence: ``"original"`` (MAP 2D: every position
in token order, mask tokens at masked positions) or ``"visible_first"`` (PointMAP / Point-MAE:
visible tokens, then mask tokens, each in token order). The row-causal mask applies to that order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from .decoder import ARDecoder
from .masking import gather_tokens, mask_to_indices, num_masked, random_mask_of_count, truncated_normal_ratio


@dataclass
class Tokens:
    """What a tokeniser hands to the pretraining module."""

    x: torch.Tensor  # (B, L, C) token features
    pos: torch.Tensor  # (B or 1, L, C) encoder position embedding
    coords: Optional[torch.Tensor]  # (B, L, D) token positions in input space, or None
    target: torch.Tensor  # (B, L, ...) what each token's reconstruction should equal


class MAPPretrainer(nn.Module):
    """Masked autoregressive pretraining around modality-supplied parts (see module docstring).

    Mask ratio: fixed ``mask_ratio`` when ``mask_ratio_std == 0``, else one ratio per step from a
    normal(mask_ratio, mask_ratio_std) truncated to ``mask_ratio_bounds`` (MAP 2D: 0.5, 0.25,
    (0.3, 0.7)). ``mask_rounding`` is ``"ceil"`` (MAP 2D) or ``"floor"`` (PointMAP).
    ``latent_proj``: whether ``decoder_embed`` is a Linear; None = only when the widths differ
    (MAP 2D always projects, even at equal widths).
    """

    def __init__(
        self,
        tokenizer: nn.Module,
        encoder: nn.Module,
        decoder: ARDecoder,
        decoder_pos: nn.Module,
        head: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        encoder_dim: int,
        decoder_dim: int,
        mask_ratio: float = 0.5,
        mask_ratio_std: float = 0.0,
        mask_ratio_bounds: Tuple[float, float] = (0.3, 0.7),
        mask_rounding: str = "ceil",
        decoder_order: str = "original",
        latent_proj: Optional[bool] = None,
    ):
        super().__init__()
        if decoder_order not in ("original", "visible_first"):
            raise ValueError(f"decoder_order must be 'original' or 'visible_first', got {decoder_order!r}")
        self.tokenizer, self.encoder = tokenizer, encoder
        if latent_proj is None:  # project only when the widths differ (Point-MAE has no projection)
            latent_proj = encoder_dim != decoder_dim
        self.decoder_embed = nn.Linear(encoder_dim, decoder_dim) if latent_proj else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_pos, self.decoder, self.head = decoder_pos, decoder, head
        self.loss_fn = loss_fn
        self.mask_ratio, self.mask_ratio_std = mask_ratio, mask_ratio_std
        self.mask_ratio_bounds, self.mask_rounding = tuple(mask_ratio_bounds), mask_rounding
        self.decoder_order = decoder_order

    def sample_num_masked(self, length: int) -> int:
        """How many of ``length`` tokens this step masks: one ratio per step, drawn on the host."""
        ratio = self.mask_ratio
        if self.mask_ratio_std > 0:
            ratio = truncated_normal_ratio(self.mask_ratio, self.mask_ratio_std, *self.mask_ratio_bounds)
        return num_masked(length, ratio, self.mask_rounding)

    def graph_static_args(self, inputs: torch.Tensor) -> dict:
        """The host-drawn part of a step, fixed in a captured CUDA graph (``map_core.graphs``): the
        number of masked tokens. The mask itself is drawn on the device, anew at every replay."""
        return {"n_mask": self.sample_num_masked(self.tokenizer.num_tokens(inputs))}

    def forward_encoder(self, tok: Tokens, keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible tokens. keep: (B, L_keep) -> (B, L_keep, C)."""
        coords = None if tok.coords is None else gather_tokens(tok.coords, keep)
        return self.encoder(gather_tokens(tok.x, keep), gather_tokens(tok.pos, keep), coords)

    def forward_decoder(
        self, latent: torch.Tensor, tok: Tokens, keep: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        """Decode all positions; returns head predictions in token order (B, L, P)."""
        b, length = tok.x.shape[:2]
        d = self.decoder_embed(latent)
        dpos = self.decoder_pos(tok.coords).expand(b, -1, -1)
        if self.decoder_order == "original":
            seq = self.mask_token.to(d.dtype).expand(b, length, -1)
            seq = seq.scatter(1, keep[..., None].expand(-1, -1, d.shape[-1]), d)
            return self.head(self.decoder(seq, dpos))
        order = torch.cat([keep, masked], dim=1)
        seq = torch.cat([d, self.mask_token.to(d.dtype).expand(b, masked.shape[1], -1)], dim=1)
        out = self.head(self.decoder(seq, gather_tokens(dpos, order)))
        return out.scatter(1, order[..., None].expand(-1, -1, out.shape[-1]), out)

    def forward(
        self, inputs: torch.Tensor, mask: Optional[torch.Tensor] = None, n_mask: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inputs: a modality batch; mask: optional bool (B, L), True = masked; n_mask: how many
        tokens a mask drawn here masks (default: drawn per step, see ``sample_num_masked``).

        Returns (loss, pred (B, L, P) in token order, mask (B, L)).
        """
        tok = self.tokenizer(inputs)
        b, length = tok.x.shape[:2]
        if mask is None:  # the count is known here: the mask is never read on the host
            n_mask = self.sample_num_masked(length) if n_mask is None else n_mask
            mask = random_mask_of_count(b, length, n_mask, device=tok.x.device)
        elif mask.shape != (b, length):
            raise ValueError(f"mask must have shape {(b, length)}, got {tuple(mask.shape)}")
        keep, masked = mask_to_indices(mask.to(tok.x.device), n_mask)
        pred = self.forward_decoder(self.forward_encoder(tok, keep), tok, keep, masked)
        loss = self.loss_fn(gather_tokens(pred, masked), gather_tokens(tok.target, masked))
        return loss, pred, mask
