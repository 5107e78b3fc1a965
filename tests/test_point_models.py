"""PointMAP tokeniser, LNP, parity with the official reference, parameter counts and an overfit check."""
import pytest
import torch
import torch.nn as nn

from map_core.masking import mask_to_indices
from map_core.registry import MODELS
from map_core.tokens import gather_tokens
from pointcloud.blocks import LocalNormPool, PointMAPEncoder
from pointcloud.convert import from_official
from pointcloud.models import PointMAPClassifier, pointmap_pretrain
from pointcloud.tokenizer import PointGroupTokenizer, group_points
from tests.reference import official_pointmap as ref
from tests.conftest import n_params

TINY = dict(trans_dim=48, depth=3, num_heads=6, group_size=8, encoder_dims=48, center_local_k=4)


def _cloud(b: int, n: int, seed: int) -> torch.Tensor:
    """Random points in a shell 0.3 <= |p| <= 1, away from the origin (the reference FPS skips
    points with |p|^2 <= 1e-3, our FPS does not)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(b, n, 3, generator=g)
    return d / d.norm(dim=-1, keepdim=True) * (0.3 + 0.7 * torch.rand(b, n, 1, generator=g))


@torch.no_grad()
def _perturb(model: nn.Module, seed: int) -> None:
    """Move every parameter and BN statistic off its init so that swapped tensors would show."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(1 + 0.2 * torch.rand(m.running_var.shape, generator=g))



# ---------------------------------------------------------------- tokeniser and LNP
def test_tokenizer_shapes_and_centred_groups():
    pts = _cloud(2, 200, 0)
    tok = PointGroupTokenizer(num_group=16, group_size=8, encoder_dims=32, trans_dim=32)(pts)
    assert tok.x.shape == (2, 16, 32) and tok.pos.shape == (2, 16, 32)
    assert tok.coords.shape == (2, 16, 3) and tok.target.shape == (2, 16, 8, 3)
    # the centre is its own nearest neighbour: offset 0 first, and every centre is an input point
    assert torch.equal(tok.target[:, :, 0], torch.zeros(2, 16, 3))
    assert torch.equal(tok.coords[:, 0], pts[:, 0])  # FPS starts at index 0
    # offsets are sorted by distance and the neighbours are input points
    dist = tok.target.norm(dim=-1)
    assert (dist[..., 1:] >= dist[..., :-1]).all()
    absolute = tok.target + tok.coords[:, :, None]
    d = (absolute.reshape(2, -1, 1, 3) - pts[:, None]).norm(dim=-1).min(-1).values
    assert d.max() < 1e-6


def test_group_points_rejects_too_many_groups():
    with pytest.raises(ValueError, match="cannot sample"):
        group_points(_cloud(1, 10, 0), 16, 4)


def test_lnp_hand_checked_case():
    """Two tokens, k=2, C=1, identity MLP: every step can be written out by hand."""
    lnp = LocalNormPool(dim=1, k=2)
    with torch.no_grad():
        lnp.mlp["share_mlp"].weight.copy_(torch.tensor([[[1.0], [0.0]]]))  # keep channel 0 only
        lnp.mlp["share_mlp"].bias.zero_()
    lnp.pre_norm_ft = nn.Identity()
    lnp.act = nn.Identity()
    center = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    x = torch.tensor([[[1.0], [3.0]]])
    # neighbours (self first): token0 -> [0, 1], token1 -> [1, 0]; diffs [0, 2] and [0, -2]
    # unbiased std of [0, 2, 0, -2] = sqrt(8 / 3)
    s = (8 / 3) ** 0.5 + 1e-5
    f0 = torch.tensor([0.0, 2 / s])
    f1 = torch.tensor([0.0, -2 / s])
    expect = torch.stack([(f0.softmax(0) * f0).sum(), (f1.softmax(0) * f1).sum()]).view(1, 2, 1)
    torch.testing.assert_close(lnp(center, x), expect)
    # with a cls token first, token 0 is passed through unchanged
    cls = torch.tensor([[[7.0]]])
    out = lnp(center, torch.cat([cls, x], dim=1))
    torch.testing.assert_close(out, torch.cat([cls, expect], dim=1))
    with pytest.raises(ValueError, match="tokens for 2 centres"):
        lnp(center, torch.zeros(1, 4, 1))


def test_lnp_pool_is_stable():
    lnp = LocalNormPool(dim=4, k=3)
    with torch.no_grad():
        lnp.lga.affine_alpha_feat.fill_(1e4)  # e^x overflows in the naive formula
    out = lnp(torch.randn(1, 6, 3), torch.randn(1, 6, 4))
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- parity with the official reference
@pytest.mark.parametrize("bug", [True, False])
def test_classifier_matches_official(bug):
    torch.manual_seed(0)
    official = ref.Mamba3D(trans_dim=48, depth=3, drop_path_rate=0.1, cls_dim=5, num_heads=6, group_size=8,
                           num_group=16, encoder_dims=48, center_local_k=4, official_mean_bug=bug).eval()
    _perturb(official, 1)
    ours = PointMAPClassifier(**TINY, num_group=16, num_classes=5, drop_path=0.1, official_mean_bug=bug).eval()
    ours.load_state_dict(from_official({"base_model": official.state_dict()}), strict=True)
    pts = _cloud(3, 128, 2)
    with torch.no_grad():
        expect, got = official(pts), ours(pts)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)
    assert ours.forward_features(pts).shape == (3, 96)


def test_mean_bug_flag_changes_only_multi_cloud_batches():
    torch.manual_seed(0)
    model = PointMAPClassifier(**TINY, num_group=16, num_classes=5).eval()
    pts = _cloud(2, 128, 3)
    with torch.no_grad():
        fixed = model.forward_features(pts)
        model.official_mean_bug = True
        buggy = model.forward_features(pts)
    torch.testing.assert_close(fixed[0], buggy[0])
    assert not torch.allclose(fixed[1], buggy[1])


def rebuilt_points(pred: torch.Tensor, mask: torch.Tensor, center=None) -> torch.Tensor:
    """Masked groups (B*M, K, 3) in (sample, group) order, as the official ``rebuild_points``;
    absolute with the group centres ``center`` (B, G, 3)."""
    masked = mask_to_indices(mask)[1]
    pts = gather_tokens(pred, masked).reshape(pred.shape[0], masked.shape[1], -1, 3)
    if center is not None:
        pts = pts + gather_tokens(center, masked).unsqueeze(2)
    return pts.reshape(-1, pts.shape[2], 3)


def test_pretrain_matches_official():
    torch.manual_seed(0)
    official = ref.Point_MAE(trans_dim=48, depth=3, drop_path_rate=0.1, num_heads=6, group_size=8,
                             num_group=16, encoder_dims=48, center_local_k=4, decoder_depth=2,
                             decoder_num_heads=6).eval()
    _perturb(official, 1)
    ours = pointmap_pretrain(**TINY, num_group=16, mask_ratio=0.6, decoder_depth=2, decoder_num_heads=6).eval()
    converted = from_official(official.state_dict())
    result = ours.load_state_dict(converted, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert "MAE_encoder.cls_token" in official.state_dict()  # dropped: unused officially
    pts = _cloud(2, 128, 4)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(2, 16, generator=g).argsort(1).argsort(1) < 9  # 9 masked of 16 per cloud
    with torch.no_grad():
        loss_ref, rebuilt_ref, gt_ref = official(pts, mask)
        loss, pred, out_mask = ours(pts, mask)
        tok = ours.tokenizer(pts)
    assert pred.shape == (2, 16, 24) and torch.equal(out_mask, mask)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rebuilt_points(pred, mask), rebuilt_ref, rtol=1e-4, atol=1e-4)
    # the target of the masked groups is the official ground truth, in the same order
    torch.testing.assert_close(rebuilt_points(tok.target.flatten(2), mask), gt_ref)
    absolute = rebuilt_points(tok.target.flatten(2), mask, tok.coords)  # true points, absolute
    assert (absolute.reshape(2, -1, 1, 3) - pts[:, None]).norm(dim=-1).min(-1).values.max() < 1e-6


def test_pretrain_rejects_non_square_groups():
    with pytest.raises(ValueError, match="perfect square"):
        pointmap_pretrain(**TINY, num_group=20)


def test_load_pretrained_official_and_own_prefixes():
    torch.manual_seed(0)
    official = ref.Point_MAE(trans_dim=48, depth=3, num_heads=6, group_size=8, num_group=16, encoder_dims=48,
                             center_local_k=4, decoder_depth=1)
    clf = PointMAPClassifier(**TINY, num_group=16, num_classes=5)
    wrapped = {"module." + k: v for k, v in official.state_dict().items()}
    result = clf.load_pretrained(wrapped)  # the engine reports the missing / unexpected keys
    assert {k.split(".")[0] for k in result.missing_keys} == {"cls_head_finetune"}
    assert "mask_token" in result.unexpected_keys
    torch.testing.assert_close(clf.cls_pos, official.MAE_encoder.cls_pos)  # official finetune loads it
    torch.testing.assert_close(clf.encoder.blocks.blocks[2].lfa.lga.affine_alpha_feat,
                               official.MAE_encoder.blocks.blocks[2].lfa.lga.affine_alpha_feat)
    # our own pretraining checkpoint
    ours = pointmap_pretrain(**TINY, num_group=16, decoder_depth=1)
    result = clf.load_pretrained({"base_model." + k: v for k, v in ours.state_dict().items()})
    assert {k.split(".")[0] for k in result.missing_keys} == {"cls_token", "cls_pos", "cls_head_finetune"}
    torch.testing.assert_close(clf.tokenizer.encoder.first_conv[0].weight, ours.tokenizer.encoder.first_conv[0].weight)
    # a classifier with another class count cannot take this head
    other = PointMAPClassifier(**TINY, num_group=16, num_classes=7)
    with pytest.raises(ValueError, match="cls_head_finetune.8.weight"):
        other.load_pretrained(clf.state_dict())


def test_no_weight_decay_and_registry():
    assert {"pointmap_pretrain", "pointmap_classifier"} <= set(MODELS.names())
    assert PointMAPClassifier(**TINY, num_group=16).no_weight_decay() == {"cls_token", "cls_pos"}


def test_param_counts_at_official_sizes():
    """Official counts from the spec, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        clf = PointMAPClassifier(trans_dim=384, depth=12, num_group=128, num_classes=15)
        pre = pointmap_pretrain(trans_dim=384, depth=12, num_group=64)
    assert n_params(clf) == 25_220_623
    # our pretraining model drops the official encoder's unused cls_token and cls_pos (2 x 384)
    assert n_params(pre) + 2 * 384 == 32_134_496


def test_encoder_is_called_like_map_core():
    enc = PointMAPEncoder(dim=48, depth=3, center_local_k=4)
    x, pos, c = torch.randn(2, 10, 48), torch.randn(2, 10, 48), torch.randn(2, 10, 3)
    assert enc(x, pos, c).shape == (2, 10, 48)
    assert len(enc.blocks.blocks) == 3 and len(enc.blocks.blocks_vit) == 1


# ---------------------------------------------------------------- overfit
@pytest.mark.slow
def test_tiny_pointmap_overfits_one_batch():
    """The Chamfer loss on one fixed batch halves, and falls below half of what the trivial
    prediction (every point at its group centre) scores, so the model really fits the shapes.
    About 100 steps of 0.05 s on a CPU."""
    torch.manual_seed(0)
    model = pointmap_pretrain(trans_dim=48, depth=3, num_heads=6, group_size=8, num_group=16, encoder_dims=48,
                              mask_ratio=0.5, drop_path=0.0, decoder_depth=1, decoder_drop_path=0.0)
    pts = _cloud(4, 128, 6)
    mask = torch.arange(16).expand(4, 16) % 2 == 1
    with torch.no_grad():
        target = model.tokenizer(pts).target[mask]
    trivial = target.pow(2).sum(-1).mean().item()  # cdl2 of predicting the centre: d1 = 0, d2 = |offset|^2
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = model(pts, mask)[0].item()
    for _ in range(200):
        loss = model(pts, mask)[0]
        if loss.item() < 0.5 * min(first, trivial):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * min(first, trivial), (first, trivial, loss.item())


def test_pretraining_tokenizer_starts_where_a_scratch_classifier_does():
    """Finetuning loads the pretrained tokeniser whole (as Point-MAE's), and the reconstruction loss
    does not train the encoder's position MLP (the decoder adds its own positions to every group), so
    that MLP leaves pretraining near its init. Both models must therefore initialise the tokeniser
    alike: with Point-MAE's trunc-normal(0.02) init in pretraining only, the position embedding was
    ~1% of the group features' norm (a scratch classifier: ~25%) and finetuning from a pretrained
    tokeniser lost ~24 points on the demo digits (docs/ablation.md, findings)."""
    torch.manual_seed(0)
    pre = pointmap_pretrain(**TINY, num_group=16)
    torch.manual_seed(0)
    clf = PointMAPClassifier(**TINY, num_group=16)
    for (name, a), (_, b) in zip(pre.tokenizer.state_dict().items(), clf.tokenizer.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        tok = pre.train().tokenizer(_cloud(4, 256, 7))
    ratio = tok.pos.norm(dim=-1).mean() / tok.x.norm(dim=-1).mean()
    assert ratio > 0.1, ratio.item()
