"""The modality-free MAP pretraining module: tokens -> encoder -> decoder -> loss, per objective.

A modality supplies five parts:

- ``tokenizer(inputs) -> Tokens``: token features, encoder positions, token coordinates and the
  per-token reconstruction target (image patches, point groups);
- ``encoder(x, pos, coords, causal=None) -> (B, L', C)``; with ``causal``, a
  :class:`map_core.objective.RowCausal`, its output at row r may depend on input rows <= r only
  (used by ``ar``);
- ``decoder_pos(coords) -> (B or 1, L, C_dec)``: the decoder's position embedding;
- ``head`` (C_dec -> P) and ``loss_fn(pred, target)`` on the predicted tokens;
- ``objective``: a :class:`map_core.objective.Objective` (``map`` | ``mae`` | ``ar``).

``decoder_order`` says how the decoder sees a masked sequence: ``"original"`` (MAP 2D: every
position in token order, mask tokens at masked positions) or ``"visible_first"`` (PointMAP /
Point-MAE: visible tokens, then mask tokens, each in token order). The objective's decoder mask
applies to that order. ``ar`` has no masked tokens: its decoder sees token order.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from .decoder import ReconstructionDecoder
from .masking import mask_to_indices
from .objective import Objective
from .tokens import Tokens, gather_tokens


class MAPPretrainer(nn.Module):
    """Masked (``map``, ``mae``) or row-autoregressive (``ar``) pretraining around modality parts.

    ``latent_proj``: whether ``decoder_embed`` is a Linear; None = only when the widths differ
    (MAP 2D always projects, even at equal widths).
    """

    def __init__(
        self,
        tokenizer: nn.Module,
        encoder: nn.Module,
        decoder: ReconstructionDecoder,
        decoder_pos: nn.Module,
        head: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        encoder_dim: int,
        decoder_dim: int,
        objective: Objective,
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
        self.objective = objective
        self.decoder_order = decoder_order

    def graph_static_args(self, inputs: torch.Tensor) -> dict:
        """The host-drawn part of a step, fixed in a captured CUDA graph (``map_core.graphs``): the
        number of masked tokens. The mask itself is drawn on the device, anew at every replay."""
        return {"n_mask": self.objective.sample_num_masked()} if self.objective.uses_mask else {}

    def forward_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Frozen features for a linear probe / SVM: every token encoded (no mask, not causal),
        pooled as [mean, max] over tokens. -> (B, 2C)."""
        tok = self.tokenizer(inputs)
        x = self.encoder(tok.x, tok.pos, tok.coords)  # (B, L, C)
        return torch.cat([x.mean(1), x.max(1).values], dim=-1)

    def forward_encoder(self, tok: Tokens, keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible tokens. keep: (B, L_keep) -> (B, L_keep, C)."""
        coords = None if tok.coords is None else gather_tokens(tok.coords, keep)
        return self.encoder(gather_tokens(tok.x, keep), gather_tokens(tok.pos, keep), coords)

    def forward_decoder(
        self, latent: torch.Tensor, tok: Tokens, keep: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        """Decode all positions of a masked sequence; returns head predictions in token order (B, L, P)."""
        b, length = tok.x.shape[:2]
        d = self.decoder_embed(latent)
        dpos = self.decoder_pos(tok.coords).expand(b, -1, -1)
        attn_mask = self.objective.decoder_mask(d.device)
        if self.decoder_order == "original":
            seq = self.mask_token.to(d.dtype).expand(b, length, -1)
            seq = seq.scatter(1, keep[..., None].expand(-1, -1, d.shape[-1]), d)
            return self.head(self.decoder(seq, dpos, attn_mask))
        order = torch.cat([keep, masked], dim=1)
        seq = torch.cat([d, self.mask_token.to(d.dtype).expand(b, masked.shape[1], -1)], dim=1)
        out = self.head(self.decoder(seq, gather_tokens(dpos, order), attn_mask))
        return gather_tokens(out, order.argsort(dim=1))  # back to token order

    def forward_next_rows(self, tok: Tokens) -> torch.Tensor:
        """``ar``: every row predicted from the rows before it; (B, L, P) in token order.

        The row-causal encoder sees every token; the decoder input at row r is the latent of row
        r - 1 (row 0 holds mask tokens) and the row-causal decoder mask hides later rows.
        """
        b, row_len = tok.x.shape[0], self.objective.row_len
        latent = self.encoder(tok.x, tok.pos, tok.coords, causal=self.objective.encoder_causality)
        d = self.decoder_embed(latent)
        seq = torch.cat([self.mask_token.to(d.dtype).expand(b, row_len, -1), d[:, :-row_len]], dim=1)
        dpos = self.decoder_pos(tok.coords).expand(b, -1, -1)
        return self.head(self.decoder(seq, dpos, self.objective.decoder_mask(d.device)))

    def forward(
        self, inputs: torch.Tensor, mask: Optional[torch.Tensor] = None, n_mask: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inputs: a modality batch; mask: optional bool (B, L), True = masked (``map`` / ``mae`` only);
        n_mask: how many tokens a mask drawn here masks (default: drawn per step on the host, see
        ``Objective.sample_num_masked``). No step reads a device value back on the host.

        Returns (loss, pred (B, L, P) in token order, mask bool (B, L)): True for the tokens the loss
        covers, the masked ones (``map`` / ``mae``: the mask given or drawn) or rows 1..R-1 (``ar``).
        """
        tok = self.tokenizer(inputs)
        b, length = tok.x.shape[:2]
        if length != self.objective.num_tokens:
            raise ValueError(f"the tokeniser gave {length} tokens; the objective was built for "
                             f"{self.objective.num_tokens}")
        if not self.objective.uses_mask:
            if mask is not None:
                raise ValueError(f"objective '{self.objective.name}' does not take a mask")
            pred = self.forward_next_rows(tok)
            mask = self.objective.predicted_rows(b, tok.x.device)
            covered = mask_to_indices(mask, self.objective.num_tokens - self.objective.row_len)[1]
        else:
            if mask is None:
                n_mask = self.objective.sample_num_masked() if n_mask is None else n_mask
                mask = self.objective.mask_of_count(b, n_mask, tok.x.device)
            elif mask.shape != (b, length):
                raise ValueError(f"mask must have shape {(b, length)}, got {tuple(mask.shape)}")
            keep, covered = mask_to_indices(mask.to(tok.x.device), n_mask)
            pred = self.forward_decoder(self.forward_encoder(tok, keep), tok, keep, covered)
        loss = self.loss_fn(gather_tokens(pred, covered), gather_tokens(tok.target, covered))
        return loss, pred, mask
