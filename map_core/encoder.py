"""The hybrid Mamba-Transformer encoder, arranged by a layout string.

A layout is a string of ``M`` (a Mamba add-norm layer) and ``T`` (a Transformer block), e.g. the
official MAP 2D arrangement ``"MMMT" * 8`` (a Transformer after every third Mamba layer). Groups may
be written with repeats and ``+``: ``"MMMT*8"``, ``"M*24"``, ``"MMMT*8+M*2"``.

Residual handling follows the official MAP code: Mamba layers carry a separate residual stream
(add -> norm -> mixer); a Transformer block placed after Mamba layers acts on the mixer output with
an outer skip, ``hidden = block(hidden) + hidden``. A layout of only ``T`` is a plain pre-norm ViT
(``x = block(x)``, no outer skip). The output is ``norm_f(residual + hidden)``.
"""
from __future__ import annotations

import re
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .errors import ConfigError
from .layers import MambaLayer, TransformerBlock, make_drop_path, make_norm
from .mixers import MambaMixer
from .objective import RowCausal


def parse_layout(layout: str) -> str:
    """Expand ``"MMMT*8+M*2"`` into a plain string of ``M``/``T``."""
    out = []
    for part in layout.replace(" ", "").split("+"):
        m = re.fullmatch(r"([MT]+)(?:\*(\d+))?", part)
        if not m:
            raise ValueError(
                f"bad layout part '{part}' in '{layout}': expected letters M/T, optionally '*count'"
            )
        out.append(m.group(1) * int(m.group(2) or 1))
    return "".join(out)


def layout_steps(layout: str) -> List[Tuple[str, int]]:
    """The run order of a parsed layout: (letter, index among the blocks of that letter) per step,
    e.g. ``"MMTM"`` -> ``[("M", 0), ("M", 1), ("T", 0), ("M", 2)]``."""
    seen = {"M": 0, "T": 0}
    steps = []
    for kind in layout:
        steps.append((kind, seen[kind]))
        seen[kind] += 1
    return steps


def official_layout(depth: int, every: int = 3) -> str:
    """MAP's arrangement: ``depth`` Mamba layers, a Transformer block after every ``every``-th."""
    return "".join("MT" if (n + 1) % every == 0 else "M" for n in range(depth))


VARIANTS = ("hybrid", "mamba", "transformer")


def evenly_spaced_taps(length: int, count: int) -> List[int]:
    """The last step of each of ``count`` equal parts of a ``length``-step layout (0-based): 4 of
    ``"MMMT" * 8`` (32 steps) -> [7, 15, 23, 31], the Transformer block ending each quarter."""
    if not 1 <= count <= length:
        raise ValueError(f"cannot tap {count} evenly spaced layers of a {length}-layer encoder")
    return [(k + 1) * length // count - 1 for k in range(count)]


def layer_decay_groups(layout: str, stem: Sequence[str], prefix: str = "encoder.") -> Callable[[str], int]:
    """timm's layer-decay grouping (``group_matcher``) of a model around a :class:`HybridEncoder`
    of ``layout`` named ``prefix``: parameters starting with one of ``stem`` (tokeniser, extra
    tokens) are group 0, the k-th step of the layout (Mamba layer or Transformer block) k + 1, and
    everything else (final norm, necks, heads) ``len(layout) + 1``, the full learning rate."""
    steps = {(("layers", "blocks")[kind == "T"], i): k for k, (kind, i) in enumerate(layout_steps(layout))}
    pattern = re.compile(re.escape(prefix) + r"(layers|blocks)\.(\d+)\.")

    def group(name: str) -> int:
        if name.startswith(tuple(stem)):
            return 0
        m = pattern.match(name)
        return steps[(m.group(1), int(m.group(2)))] + 1 if m else len(layout) + 1

    return group


def matched_layout(variant: str, depth: int, mamba_numel: int, hybrid_block_numel: int,
                   block_numel: Optional[int] = None) -> str:
    """The layout of a ``variant`` with about the parameters of the hybrid ``official_layout(depth)``.

    ``hybrid``: ``official_layout(depth)``. ``mamba``: n Mamba layers, ``transformer``: n Transformer
    blocks, n = round(hybrid parameters / parameters of one such layer), at least 1. The counts are
    measured by the modality (``mamba_numel``: one Mamba layer; ``hybrid_block_numel``: one of the
    hybrid's Transformer blocks; ``block_numel``: one block of the pure-Transformer variant, when its
    blocks differ from the hybrid's). The encoder's final norm is shared and not counted.
    """
    hybrid = official_layout(depth)
    if variant == "hybrid":
        return hybrid
    total = hybrid.count("M") * mamba_numel + hybrid.count("T") * hybrid_block_numel
    if variant == "mamba":
        return "M" * max(1, round(total / mamba_numel))
    if variant == "transformer":
        return "T" * max(1, round(total / (block_numel or hybrid_block_numel)))
    raise ConfigError(f"model.variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")


class HybridEncoder(nn.Module):
    """Mamba layers (``layers.{i}``) and Transformer blocks (``blocks.{j}``) in layout order.

    forward(x: (B, L, C), pos: (B or 1, L, C) or None) -> (B, L, C). ``pos`` is added once, at the
    input. Drop path follows the official schedule over the Mamba layers (see ``__init__``); Transformer
    blocks get ``block_drop_path``.
    """

    def __init__(
        self,
        dim: int,
        layout: str,
        bidirectional: Optional[str] = "sequence",
        d_state: int = 16,
        expand: int = 2,
        norm: str = "rms",
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        drop_path: float = 0.0,
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        block_drop_path: float = 0.0,
    ):
        super().__init__()
        self.layout = parse_layout(layout)
        n_mamba = self.layout.count("M")
        # official schedule: layer i gets ([0] + linspace(0, drop_path, n))[i]; the final add
        # before norm_f gets the full rate
        rates = ([0.0] + torch.linspace(0, drop_path, n_mamba, device="cpu").tolist())[:n_mamba]
        self.layers = nn.ModuleList(
            MambaLayer(
                dim,
                MambaMixer(dim, d_state=d_state, expand=expand, bidirectional=bidirectional),
                norm=norm, eps=norm_eps, drop_path=rate, residual_in_fp32=residual_in_fp32,
                in_schedule=drop_path > 0,
            )
            for rate in rates
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_ratio, qkv_bias, block_drop_path)
            for _ in range(self.layout.count("T"))
        )
        self.norm_f = make_norm(norm, dim, norm_eps)
        self.drop_path = make_drop_path(drop_path)

    def forward(
        self, x: torch.Tensor, pos: Optional[torch.Tensor] = None, coords: Optional[torch.Tensor] = None,
        causal: Optional[RowCausal] = None, return_layers: Optional[Sequence[int]] = None,
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        """``coords`` is accepted for interface parity with encoders that use geometry; unused.

        ``causal`` (the ``ar`` objective): the output at row r depends on input rows <= r only:
        Mamba layers scan forward only, Transformer blocks get its attention mask.
        ``return_layers`` (layout step indices, e.g. :func:`evenly_spaced_taps`): the list of the
        token states after those steps instead, each ``norm_f(residual + hidden)`` (drop path only
        on the last step's, which is the output); steps after the deepest tap are not run.
        """
        hidden = x if pos is None else x + pos
        residual = None
        outer_skip = "M" in self.layout
        attn_mask = causal.attn_mask(x.shape[1], x.device) if causal is not None else None
        wanted = set(return_layers or ())
        if return_layers is not None and (not wanted or not wanted <= set(range(len(self.layout)))):
            raise ValueError(f"return_layers {list(return_layers)}: expected steps 0..{len(self.layout) - 1}")
        taps = {}
        for step, (kind, i) in enumerate(layout_steps(self.layout)):
            if wanted and step > max(wanted):
                break
            if kind == "M":
                hidden, residual = self.layers[i](hidden, residual, causal=causal is not None)
            else:
                out = self.blocks[i](hidden, attn_mask)
                hidden = out + hidden if outer_skip else out
            if step in wanted:
                taps[step] = self._output(hidden, residual, drop=step == len(self.layout) - 1)
        if return_layers is not None:
            return [taps[step] for step in return_layers]
        return self._output(hidden, residual)

    def _output(self, hidden: torch.Tensor, residual: Optional[torch.Tensor], drop: bool = True) -> torch.Tensor:
        residual = hidden if residual is None else residual + (self.drop_path(hidden) if drop else hidden)
        return self.norm_f(residual.to(self.norm_f.weight.dtype))
