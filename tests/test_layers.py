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


def test_drop_path_drops_whole_samples_and_rescales_the_kept_ones():
    from map_core.layers import DropPath

    torch.manual_seed(0)
    layer = DropPath(0.25)
    x = torch.randn(4000, 3, 5) + 2.0
    y = layer(x)
    kept = (y != 0).flatten(1)
    assert (kept.all(1) | ~kept.any(1)).all()  # each sample all kept or all dropped
    assert torch.allclose(y[kept.all(1)], x[kept.all(1)] / 0.75)
    assert abs(kept.all(1).float().mean().item() - 0.75) < 0.03
    assert "drop_prob=0.250" in repr(layer) and not layer.state_dict()  # no new state-dict entries
    layer.eval()
    assert layer(x) is x


def test_a_drop_path_schedule_compiles_once_per_block_kind():
    """The rate is a tensor, not a guarded float: four Mamba layers of four rates make two graphs
    (the first layer, which starts the residual stream, and the rest), not four."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from map_core.compile import compile_blocks
    from map_core.encoder import HybridEncoder

    torch._dynamo.reset()
    counters.clear()
    encoder = HybridEncoder(16, "MMMMT", d_state=4, drop_path=0.3, num_heads=2).train()
    assert compile_blocks(encoder, backend="eager") == 5
    encoder(torch.randn(2, 6, 16, requires_grad=True))  # as the tokeniser's output in training
    assert counters["stats"]["unique_graphs"] == 3  # 2 MambaLayer graphs + 1 TransformerBlock


@pytest.mark.parametrize("dim,heads", [(192, 16), (64, 4)])  # head 12 (padded to 16), head 16 (as is)
def test_dual_norm_attention_equals_softmax_attention_written_out(dim, heads):
    from map_core.layers import DualNormAttention

    torch.manual_seed(0)
    attn = DualNormAttention(dim, heads, qkv_bias=True)
    q_in, kv_in = torch.randn(2, 10, dim), torch.randn(2, 10, dim)
    mask = row_causal_mask(10, 3)
    b, n, hd = 2, 10, dim // heads
    q = attn.q(q_in).view(b, n, heads, hd).transpose(1, 2)
    k, v = attn.kv(kv_in).view(b, n, 2, heads, hd).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / hd ** 0.5).masked_fill(~mask, float("-inf"))
    want = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, dim))
    torch.testing.assert_close(attn(q_in, kv_in, mask), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused attention kernels need a GPU")
def test_map2d_decoder_attention_runs_on_a_fused_kernel():
    """With the math path switched off, SDPA raises if no fused kernel takes the inputs: MAP 2D's
    head size 12 must not send its decoder to the fp32 math path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from map_core.layers import DualNormAttention

    attn = DualNormAttention(192, 16, qkv_bias=True).cuda()
    x = torch.randn(4, 196, 192, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION,
                                                                    SDPBackend.FLASH_ATTENTION,
                                                                    SDPBackend.CUDNN_ATTENTION]):
        attn(x, x, row_causal_mask(196, 14, "cuda")).float().sum().backward()
