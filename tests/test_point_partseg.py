"""Part segmentation on ShapeNetPart: encoder taps, the reader on tiny files in the real format,
feature propagation, the model, the mIoU metrics and a two-epoch run through tools/train.py."""
import pytest
import torch

from pointcloud.blocks import PointMAPEncoder


def test_encoder_return_layers_match_a_manual_walk():
    """Taps = the hidden state after Mamba3D block n (and its Trans3D block), through the final norm."""
    torch.manual_seed(0)
    enc = PointMAPEncoder(dim=24, depth=6, num_heads=4).eval()
    x, pos, center = torch.randn(2, 10, 24), torch.randn(2, 10, 24), torch.randn(2, 10, 3)
    with torch.no_grad():
        taps = enc(x, pos, center, return_layers=[1, 2, 5])
        h, walk = x, {}
        for n, block in enumerate(enc.blocks.blocks):
            h = block(h + pos, center)
            if n in (2, 5):  # Trans3D blocks 0 and 1 follow Mamba3D blocks 2 and 5
                h = enc.blocks.blocks_vit[n // 3](h + pos, center)
            walk[n] = enc.norm(h)
        final = enc(x, pos, center)
    assert len(taps) == 3
    for tap, n in zip(taps, [1, 2, 5]):
        torch.testing.assert_close(tap, walk[n])
    torch.testing.assert_close(taps[-1], final)
    assert not torch.allclose(taps[0], taps[1])


def test_encoder_return_layers_rejects_bad_indices():
    enc = PointMAPEncoder(dim=24, depth=3, num_heads=4)
    x = torch.randn(1, 4, 24)
    for bad in ([3], [-1], []):
        with pytest.raises(ValueError, match=r"blocks 0\.\.2"):
            enc(x, x, torch.randn(1, 4, 3), return_layers=bad)
