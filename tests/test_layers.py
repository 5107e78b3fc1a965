"""The pre-norm Transformer block (timm's ViT Block): names, maths with a mask, both attention paths."""
import pytest
import torch
import torch.nn.functional as F

from map_core.layers import TransformerBlock
from map_core.objective import row_causal_mask


def _reference(blk: TransformerBlock, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The block written out by hand: softmax attention with -inf where ``allowed`` is False."""
    b, n, c = x.shape
    h = blk.attn.num_heads
    y = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias, 1e-5)
    q, k, v = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / (c // h) ** 0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    attn = (weights @ v).transpose(1, 2).reshape(b, n, c) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    x = x + attn
    y = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias, 1e-5)
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(y)))


def test_state_dict_names_are_the_official_vit_names():
    blk = TransformerBlock(16, 2, mlp_ratio=2.0, qkv_bias=True)
    assert sorted(blk.state_dict()) == sorted(
        f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias"))
    assert blk.mlp.fc1.out_features == 32 and blk.norm1.eps == 1e-5
    assert "attn.qkv.bias" not in TransformerBlock(16, 2, qkv_bias=False).state_dict()


@pytest.mark.parametrize("fused", [True, False])
def test_row_causal_mask_matches_hand_written_block(fused):
    """timm's SDPA path and its explicit path both read the bool mask as True = may attend."""
    torch.manual_seed(0)
    blk = TransformerBlock(16, 2, qkv_bias=True).eval()
    blk.attn.fused_attn = fused
    x = torch.randn(2, 6, 16)
    mask = row_causal_mask(6, 2, x.device)
    torch.testing.assert_close(blk(x, mask), _reference(blk, x, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blk(x), _reference(blk, x, torch.ones(6, 6, dtype=torch.bool)), atol=1e-5, rtol=1e-5)


def test_compiles_whole_with_a_mask():
    torch.manual_seed(0)
    blk = TransformerBlock(16, 2, qkv_bias=True)
    x = torch.randn(2, 6, 16)
    mask = row_causal_mask(6, 3, x.device)
    compiled = torch.compile(blk, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    torch.testing.assert_close(compiled(x, mask), blk(x, mask))


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="dim 10 is not divisible by num_heads 4"):
        TransformerBlock(10, 4)
