"""Sanity tests of the official-model references in tests/reference (the parity oracle itself)."""
import math

import pytest
import torch
import torch.nn.functional as F

from tests.reference import causal_conv1d_silu, selective_scan_loop
from tests.reference import official_map2d as ref2d
from tests.reference import official_pointmap as ref3d
from tests.conftest import n_params



# ---------------------------------------------------------------- scan and conv
def test_scan_matches_closed_form():
    torch.manual_seed(0)
    b, d, n, l = 2, 3, 4, 5
    u, delta, z = torch.randn(b, d, l), torch.randn(b, d, l), torch.randn(b, d, l)
    A = -torch.rand(d, n) - 0.1
    B, C = torch.randn(b, n, l), torch.randn(b, n, l)
    D, bias = torch.randn(d), torch.randn(d)
    out = selective_scan_loop(u, delta, A, B, C, D, z, bias, delta_softplus=True)

    dt = F.softplus(delta + bias[:, None])  # (b, d, l)
    cum = dt.cumsum(-1)
    # h_t = sum_{s<=t} exp(A (cum_t - cum_s)) dt_s B_s u_s
    decay = torch.exp(A[None, :, None, None, :] * (cum[..., :, None] - cum[..., None, :])[..., None])
    causal = torch.tril(torch.ones(l, l))[None, None, :, :, None]
    inp = (dt * u)[:, :, None, :, None] * B.transpose(1, 2)[:, None, None, :, :]  # (b, d, 1, s, n)
    h = (decay * causal * inp).sum(3)  # (b, d, t, n)
    y = (h * C.transpose(1, 2)[:, None]).sum(-1) + D[:, None] * u
    torch.testing.assert_close(out, y * F.silu(z), rtol=1e-5, atol=1e-5)


def test_scan_two_steps_by_hand():
    u = torch.tensor([[[1.0, 2.0]]])
    delta = torch.tensor([[[0.5, 0.25]]])
    A = torch.tensor([[-2.0]])
    B = torch.tensor([[[1.0, 3.0]]])
    C = torch.tensor([[[2.0, -1.0]]])
    out = selective_scan_loop(u, delta, A, B, C, D=torch.tensor([0.5]))
    h1 = 0.5 * 1.0 * 1.0
    h2 = math.exp(-0.5) * h1 + 0.25 * 3.0 * 2.0
    torch.testing.assert_close(out, torch.tensor([[[2.0 * h1 + 0.5, -h2 + 1.0]]]))


def test_causal_conv_ignores_the_future():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(3, 3, 4, groups=3, padding=3)
    x = torch.randn(1, 3, 8)
    x2 = x.clone()
    x2[..., 5:] = torch.randn(1, 3, 3)
    torch.testing.assert_close(causal_conv1d_silu(x, conv)[..., :5], causal_conv1d_silu(x2, conv)[..., :5])
    assert causal_conv1d_silu(x, conv).shape == x.shape


# ---------------------------------------------------------------- parameter counts (spec numbers)
@pytest.mark.parametrize("factory, count", [
    (ref2d.map_tiny_patch16_224, 13_644_904),
    (ref2d.map_small_patch16_224, 39_313_384),
])
def test_map2d_parameter_counts(factory, count):
    with torch.device("meta"):
        model = factory()
    assert n_params(model) == count


def test_pointmap_parameter_counts():
    with torch.device("meta"):
        classifier = ref3d.Mamba3D(trans_dim=384, depth=12, cls_dim=15, num_group=128, group_size=32,
                                   encoder_dims=384, center_local_k=4)
        pretrain = ref3d.Point_MAE(trans_dim=384, depth=12, num_group=64, group_size=32, encoder_dims=384,
                                   center_local_k=4)
    assert n_params(classifier) == 25_220_623
    assert n_params(pretrain) == 32_134_496


def test_map2d_official_names():
    with torch.device("meta"):
        keys = set(ref2d.map_small_patch16_224().state_dict())
    for name in ["patch_embed.proj.weight", "pos_embed", "cls_token", "pos_embed_cls", "neck.weight",
                 "norm_neck.weight", "head.weight", "layers.23.mixer.A_b_log", "layers.0.mixer.conv1d_b.bias",
                 "layers.0.mixer.dt_proj_b.bias", "layers.0.mixer.D_b", "layers.0.norm.weight",
                 "blocks.7.attn.qkv.bias", "norm_f.weight", "decoder_embed.weight", "mask_token",
                 "decoder_pos_embed_learned", "decoder_blocks.3.attn2.kv.weight", "decoder_blocks.0.norm2_2.bias",
                 "decoder_norm.weight", "ar_pred.weight"]:
        assert name in keys, name
    assert "layers.0.norm.bias" not in keys and "norm_f.bias" not in keys  # RMSNorm has no bias
    assert "layers.0.mixer.in_proj.bias" not in keys


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("module", [ref2d, ref3d])
def test_row_causal_mask(module):
    mask = module.row_causal_mask(16)
    rows = torch.arange(16) // 4
    assert torch.equal(mask == 0, rows[None, :] <= rows[:, None])
    assert torch.isneginf(mask[~(mask == 0)]).all()


# ---------------------------------------------------------------- 2D forward
def _tiny_2d() -> ref2d.VisionMamba:
    return ref2d.VisionMamba(img_size=32, patch_size=8, depth=6, embed_dim=24, num_heads=4,
                             decoder_embed_dim=16, decoder_num_heads=4, num_cls_tokens=2, cls_reduce=2,
                             num_classes=5).eval()


def test_map2d_forward_shapes_and_visible_only_encoding():
    torch.manual_seed(0)
    model = _tiny_2d()
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 4, 5, 9, 15]] = True
    mask[1, [0, 2, 3, 7, 8]] = True
    with torch.no_grad():
        loss, pred, mask_f = model(imgs, mask)
        assert pred.shape == (2, 16, 8 * 8 * 3) and loss.ndim == 0 and torch.isfinite(loss)
        assert torch.equal(mask_f, mask.float())
        # predictions depend only on visible patches: rewrite the pixels of masked patch 15 of image 0
        imgs2 = imgs.clone()
        imgs2[0, :, 24:32, 24:32] = torch.randn(3, 8, 8)
        _, pred2, _ = model(imgs2, mask)
    torch.testing.assert_close(pred, pred2)


def test_map2d_mixer_is_bidirectional_and_halved():
    torch.manual_seed(0)
    mixer = ref2d.Mamba(16).eval()
    x = torch.randn(1, 6, 16)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(mixer(x)[:, 0], mixer(x2)[:, 0])  # backward branch sees the future
        # with identical branches and a palindromic sequence, (y + flip(y_b)) / 2 == y
        for name in ["conv1d", "x_proj", "dt_proj"]:
            getattr(mixer, name + "_b").load_state_dict(getattr(mixer, name).state_dict())
        mixer.A_b_log.copy_(mixer.A_log)
        mixer.D_b.copy_(mixer.D)
        pal = torch.cat([x[:, :3], x[:, :3].flip(1)], dim=1)
        xz = (pal @ mixer.in_proj.weight.t()).transpose(1, 2)
        y = ref2d.mamba_inner_no_out_proj(xz, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
        single = F.linear(y.transpose(1, 2), mixer.out_proj.weight)
        assert not torch.allclose(single, mixer(pal))  # the forward-only output is not symmetric
        expect = F.linear(((y + y.flip(-1)) / 2).transpose(1, 2), mixer.out_proj.weight)
        torch.testing.assert_close(mixer(pal), expect)


# ---------------------------------------------------------------- 3D
def test_fps_and_group():
    torch.manual_seed(0)
    pts = torch.randn(2, 64, 3)
    center = ref3d.fps(pts, 8)
    assert torch.equal(center[:, 0], pts[:, 0])
    for b in range(2):
        assert len({tuple(c.tolist()) for c in center[b]}) == 8
    neighborhood, center2 = ref3d.Group(8, 5)(pts)
    assert neighborhood.shape == (2, 8, 5, 3) and torch.equal(center, center2)
    assert torch.allclose(neighborhood[:, :, 0], torch.zeros(2, 8, 3))  # nearest neighbour = the centre


def test_fps_skips_points_at_the_origin_like_the_cuda_kernel():
    pts = torch.tensor([[[1.0, 0, 0], [0.0, 0, 0.01], [-1.0, 0, 0], [0.0, 0.5, 0]]])
    assert ref3d.fps(pts, 3)[0, :, 1].tolist() == [0.0, 0.0, 0.5]  # the near-origin point is never picked
    plain = ref3d.fps(pts, 4, skip_sq_norm=0.0)
    assert pts[0, 1].tolist() in plain[0].tolist()


def test_chamfer():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[0.0, 0, 0], [3, 0, 0]]])
    # a->b: 0, 1 ; b->a: 0, 4
    assert ref3d.ChamferDistanceL2()(a, b).item() == pytest.approx(0.5 + 2.0)
    assert ref3d.ChamferDistanceL1()(a, b).item() == pytest.approx((0.5 + 1.0) / 2)


def _tiny_3d_kwargs():
    return dict(trans_dim=24, depth=3, drop_path_rate=0.0, group_size=8, encoder_dims=24, center_local_k=4)


def test_pointmap_classifier_forward_and_mean_flag():
    torch.manual_seed(0)
    model = ref3d.Mamba3D(cls_dim=5, num_group=16, **_tiny_3d_kwargs()).eval()
    pts = torch.randn(2, 96, 3)
    with torch.no_grad():
        logits = model(pts)
        assert logits.shape == (2, 5)
        model.official_mean_bug = False
        fixed = model(pts)
        assert not torch.allclose(logits[1], fixed[1])  # the bug uses sample 0's mean
        torch.testing.assert_close(logits[0], fixed[0])
        model.official_mean_bug = True
        single_bug = model(pts[:1])
        model.official_mean_bug = False
        torch.testing.assert_close(single_bug, model(pts[:1]))  # identical for one cloud


def test_lnp_std_couples_the_batch():
    # the official LNP divides by ONE std over the whole (B, G, K, C) tensor, so samples interact
    torch.manual_seed(0)
    k_norm = ref3d.K_Norm(16, 4)
    center, feat = torch.randn(2, 6, 3), torch.randn(2, 6, 8)
    feat[1] *= 10.0
    both = k_norm(center, feat)
    alone = k_norm(center[:1], feat[:1])
    assert not torch.allclose(both[:1], alone)


def test_lnp_passes_cls_through_in_finetuning():
    torch.manual_seed(0)
    lnp = ref3d.LNPBlock(16, 4, 16, 8)
    center, feat = torch.randn(2, 6, 3), torch.randn(2, 7, 8)
    out = lnp(center, feat)
    assert out.shape == (2, 7, 8) and torch.equal(out[:, 0], feat[:, 0])
    assert lnp(center, feat[:, 1:]).shape == (2, 6, 8)  # pretraining: every token goes through LNP


def test_point_mae_forward_shapes():
    torch.manual_seed(0)
    model = ref3d.Point_MAE(num_group=16, **_tiny_3d_kwargs()).eval()
    pts = torch.randn(2, 96, 3)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :10] = True
    mask[1, 6:] = True
    with torch.no_grad():
        loss, rebuilt, gt = model(pts, mask)
    assert rebuilt.shape == gt.shape == (20, 8, 3)
    assert loss.ndim == 0 and torch.isfinite(loss)
