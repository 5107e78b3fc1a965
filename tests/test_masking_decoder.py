"""Masking, the row-causal decoder mask (by perturbation) and the losses."""
import math

import pytest
import torch

from map_core.decoder import ReconstructionDecoder
from map_core.losses import chamfer_distance, masked_mse, nearest_sq_dist
from map_core.masking import (
    mask_to_indices, num_masked, random_mask_of_count, truncated_normal_ratio,
)
from map_core.objective import row_causal_mask
from map_core.tokens import gather_tokens


@pytest.mark.parametrize("length,ratio", [(196, 0.5), (196, 0.3), (196, 0.7), (64, 0.6), (10, 0.0)])
def test_mask_counts(length, ratio):
    assert num_masked(length, ratio) == math.ceil(length * ratio)
    assert num_masked(length, ratio, rounding="floor") == int(length * ratio)
    m = random_mask_of_count(8, length, num_masked(length, ratio), generator=torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and m.shape == (8, length)
    assert (m.sum(1) == math.ceil(length * ratio)).all()


def test_random_mask_is_seeded_and_varies_by_row():
    a = random_mask_of_count(4, 50, 25, generator=torch.Generator().manual_seed(1))
    b = random_mask_of_count(4, 50, 25, generator=torch.Generator().manual_seed(1))
    c = random_mask_of_count(4, 50, 25, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 4))


def test_random_mask_is_uniform_over_positions():
    m = random_mask_of_count(4000, 10, 3, generator=torch.Generator().manual_seed(0)).float().mean(0)
    assert (m - 0.3).abs().max() < 0.03


def test_truncated_normal_ratio():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([truncated_normal_ratio(generator=g) for _ in range(2000)])
    assert r.min() >= 0.3 and r.max() <= 0.7
    assert abs(r.mean().item() - 0.5) < 0.01
    assert r.std() > 0.09  # a normal with std 0.25 cut to +-0.2 still spreads widely


def test_mask_to_indices_and_gather():
    m = torch.tensor([[True, False, True, False], [False, False, True, True]])
    keep, masked = mask_to_indices(m)
    assert keep.tolist() == [[1, 3], [0, 1]] and masked.tolist() == [[0, 2], [2, 3]]
    x = torch.arange(8.0).view(2, 4, 1)
    assert gather_tokens(x, keep).squeeze(-1).tolist() == [[1, 3], [4, 5]]
    with pytest.raises(ValueError, match="same number of masked"):
        mask_to_indices(torch.tensor([[True, False], [True, True]]))
    with pytest.raises(ValueError):
        num_masked(10, 1.5)


def test_gather_tokens_with_index_of_any_rank_and_broadcast_batch():
    x = torch.arange(2 * 5 * 3).view(2, 5, 3).float()
    idx = torch.tensor([[[4, 0], [1, 1]], [[2, 3], [0, 4]]])
    out = gather_tokens(x, idx)  # a (B, G, k) neighbour index, as the point ops use it
    assert out.shape == (2, 2, 2, 3)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(out[b, i, j], x[b, idx[b, i, j]])
    pos = torch.randn(1, 5, 3, requires_grad=True)  # a shared position table
    keep = torch.tensor([[0, 4], [4, 2], [4, 1]])
    assert torch.equal(gather_tokens(pos, keep), pos[0][keep])
    gather_tokens(pos, keep).sum().backward()
    assert pos.grad[0, :, 0].tolist() == [1, 1, 1, 0, 3]  # a table row gets one gradient per use
    with pytest.raises(ValueError, match=r"batch sizes differ, x \(2, 5, 3\) vs idx \(3, 2\)"):
        gather_tokens(x, keep)


def test_row_causal_mask_definition():
    m = row_causal_mask(6, 2)
    for q in range(6):
        for k in range(6):
            assert bool(m[q, k]) == (k // 2 <= q // 2)


@pytest.mark.parametrize("block", ["vit", "dual_norm"])
def test_decoder_rows_see_only_their_row_and_earlier(block):
    torch.manual_seed(0)
    row_len, rows = 3, 4
    dec = ReconstructionDecoder(16, 2, 4, block=block).eval()
    x = torch.randn(2, rows * row_len, 16)
    pos = torch.randn(1, rows * row_len, 16)
    rows_mask = row_causal_mask(rows * row_len, row_len)
    base = dec(x, pos, rows_mask)
    bump = torch.randn(16)  # not a constant: LayerNorm would erase a constant shift
    for r in range(rows - 1):
        x2 = x.clone()
        x2[:, (r + 1) * row_len] += bump  # a token of row r+1
        out = dec(x2, pos, rows_mask)
        end = (r + 1) * row_len
        torch.testing.assert_close(out[:, :end], base[:, :end])  # rows 0..r unchanged
        assert not torch.allclose(out[:, end:end + row_len], base[:, end:end + row_len])
    x3 = x.clone()
    x3[:, 2 * row_len + 1] += bump  # a token of row 2 changes all of row 2
    diff = (dec(x3, pos, rows_mask) - base).abs().amax(-1)
    assert (diff[:, 2 * row_len:3 * row_len] > 1e-4).all()
    # without the causal mask every token sees everything
    x4 = x.clone()
    x4[:, -1] += bump
    assert ((dec(x4, pos) - dec(x, pos)).abs().amax(-1) > 1e-5).all()


def test_masked_mse_uses_masked_tokens_only():
    pred, target = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[True, False, True, False, False], [False, True, False, False, True]])
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    want = ((pred - t) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(masked_mse(pred, target, mask), want)
    pred2 = pred.clone()
    pred2[~mask] = 100.0
    torch.testing.assert_close(masked_mse(pred2, target, mask), want)
    raw = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(masked_mse(pred, target, mask, norm_pix=False), raw)


def brute_chamfer(x, y):
    d1 = torch.tensor([[min(((p - q) ** 2).sum().item() for q in y[b]) for p in x[b]] for b in range(len(x))])
    d2 = torch.tensor([[min(((p - q) ** 2).sum().item() for q in x[b]) for p in y[b]] for b in range(len(x))])
    return d1, d2


def test_chamfer_against_brute_force():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 7, 3, generator=g), torch.randn(3, 5, 3, generator=g)
    d1, d2 = brute_chamfer(x, y)
    torch.testing.assert_close(chamfer_distance(x, y, 2), d1.mean() + d2.mean())
    torch.testing.assert_close(chamfer_distance(x, y, 1), (d1.sqrt().mean() + d2.sqrt().mean()) / 2)
    # chunking changes nothing
    c1, c2 = nearest_sq_dist(x, y, max_elems=10)
    torch.testing.assert_close(c1, d1)
    torch.testing.assert_close(c2, d2)
    assert chamfer_distance(x, x).item() == 0.0
    with pytest.raises(ValueError):
        chamfer_distance(x, y, 3)


@pytest.mark.slow
def test_chamfer_is_exact_and_memory_bounded_at_scale():
    """32 clouds x 2048 points in chunks: no intermediate beyond max_elems differences, and the value
    equals a brute-force cdist on a subsample; cdl1 keeps finite gradients at coincident points."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                Largest.numel = max(Largest.numel, out.numel())
            return out

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 2048, 3, generator=g), torch.randn(32, 2048, 3, generator=g)
    with Largest():
        d = chamfer_distance(x, y, max_elems=2**22)
    assert Largest.numel <= 2**22  # the (B, chunk, M, 3) differences, never (B, N, M, 3) = 2**29
    def brute(a, b):  # exact, four clouds at a time
        sq = torch.cdist(a.double(), b.double()) ** 2
        return sq.min(2).values.mean() + sq.min(1).values.mean()

    torch.testing.assert_close(chamfer_distance(x[:4], y[:4], max_elems=2**18).double(), brute(x[:4], y[:4]),
                               rtol=1e-5, atol=0)
    exact = torch.stack([brute(x[i:i + 4], y[i:i + 4]) for i in range(0, 32, 4)]).mean()
    torch.testing.assert_close(d.double(), exact, rtol=1e-5, atol=0)
    pts = x[:2].clone().requires_grad_()
    chamfer_distance(pts, x[:2], norm=1).backward()
    assert torch.isfinite(pts.grad).all()


def test_masked_mse_without_mask_averages_given_tokens():
    pred, target = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    everything = torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(masked_mse(pred, target), masked_mse(pred, target, everything))
