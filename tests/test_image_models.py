"""Image MAP models: tokeniser, official parity and names, sizes, classifier registers, loading."""
import math

import pytest
import timm
import torch

import image
from image.classifier import get_cls_idx, map_classifier
from image.models import variant_layout
from image.convert import from_official, official_unused_numel, to_official
from image.models import SIZES, map_pretrain
from image.tokenizer import ImagePatchTokenizer, patchify, unpatchify
from map_core.registry import MODELS
from map_core.weights import CheckpointShapeError
from tests.reference.official_map2d import VisionMamba

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=6, num_heads=4)  # 16 tokens, 2 ViT blocks
UNUSED = ("cls_token", "pos_embed_cls", "neck.", "norm_neck.", "head.")


def _reference(drop_path_rate: float = 0.0) -> VisionMamba:
    # decoder width == encoder width: the official decoder_embed is a Linear even then
    return VisionMamba(img_size=32, patch_size=8, depth=6, embed_dim=64, num_heads=4, num_cls_tokens=4,
                       cls_reduce=2, num_classes=10, decoder_embed_dim=64, decoder_num_heads=4,
                       decoder_depth=2, drop_path_rate=drop_path_rate)


def _ours(**kw):
    args = dict(TINY, decoder_dim=64, decoder_depth=2, decoder_heads=4, drop_path_rate=0.0)
    args.update(kw)
    return map_pretrain(**args)


def _mask(batch: int, length: int, n_mask: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(length, generator=g)[:n_mask]] = True
    return mask


def test_patchify_order_matches_official_and_inverts():
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 32, 48)
    x = patchify(imgs, 8)
    assert x.shape == (2, 4 * 6, 8 * 8 * 3)
    # patch (h=1, w=2), pixel (p=3, q=5), channel 2 -> index [1*6+2, (3*8+5)*3+2]
    assert x[0, 1 * 6 + 2, (3 * 8 + 5) * 3 + 2] == imgs[0, 2, 8 + 3, 16 + 5]
    assert torch.equal(unpatchify(x, 8, (4, 6)), imgs)
    square = torch.randn(2, 3, 32, 32)
    assert torch.equal(patchify(square, 8), _reference().patchify(square))


def test_tokenizer_takes_one_size_or_height_and_width():
    assert ImagePatchTokenizer(32, 8, 3, 16).grid_size == (4, 4)
    assert ImagePatchTokenizer([32, 48], 8, 3, 16).grid_size == (4, 6)
    with pytest.raises(ValueError, match=r"one int or \(height, width\), got \(32, 32, 32\)"):
        ImagePatchTokenizer((32, 32, 32), 8, 3, 16)
    with pytest.raises(ValueError, match="not divisible by patch size 8"):
        patchify(torch.zeros(1, 3, 32, 36), 8)
    with pytest.raises(ValueError, match=r"expects \(B, 16, 192\)"):
        unpatchify(torch.zeros(1, 16, 191), 8, (4, 4))


def test_tokenizer_resizes_pos_embed_for_other_grid():
    tok = ImagePatchTokenizer(32, 8, 3, 16)
    out = tok(torch.randn(2, 3, 48, 40))
    assert out.x.shape == (2, 30, 16) and out.pos.shape == (1, 30, 16)
    assert out.target.shape == (2, 30, 192) and out.coords is None
    assert torch.equal(tok(torch.randn(1, 3, 32, 32)).pos, tok.pos_embed)


def test_pretrain_forward_shapes_and_mask_ratio():
    torch.manual_seed(0)
    model = _ours()
    loss, pred, mask = model(torch.randn(3, 3, 32, 32))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (3, 16, 192) and mask.shape == (3, 16)
    n = int(mask[0].sum())
    assert math.ceil(16 * 0.3) <= n <= math.ceil(16 * 0.7) and (mask.sum(1) == n).all()
    assert isinstance(model.decoder_embed, torch.nn.Linear)  # official: a Linear even at equal widths
    with pytest.raises(ValueError, match="patch grid"):
        model(torch.randn(1, 3, 48, 48))


def test_init_matches_official_final_pass():
    torch.manual_seed(0)
    ref, ours = _reference(), _ours()
    for model, mixer in ((ref, ref.layers[0].mixer), (ours, ours.encoder.layers[0].mixer)):
        assert torch.count_nonzero(mixer.dt_proj.bias) == 0  # the xavier pass zeroes it in the release
        bound = math.sqrt(6 / sum(mixer.out_proj.weight.shape))
        assert mixer.out_proj.weight.abs().max() <= bound
    assert abs(ours.mask_token.std().item() - 0.02) < 0.01
    assert torch.equal(ours.encoder.layers[0].mixer.A_log, ref.layers[0].mixer.A_log)


@pytest.mark.parametrize("train", [False, True])
def test_official_parity(train):
    torch.manual_seed(0)
    ref = _reference()
    ours = _ours()
    ours.load_state_dict(from_official(ref.state_dict()), strict=True)
    ref.train(train)
    ours.train(train)
    imgs, mask = torch.randn(2, 3, 32, 32), _mask(2, 16, 9)
    with torch.no_grad():
        l_ref, p_ref, m_ref = ref(imgs, mask)
        l_ours, p_ours, m_ours = ours(imgs, mask)
    assert torch.allclose(l_ours, l_ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(p_ours, p_ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(m_ours.float(), m_ref)


def test_official_round_trip_and_load_pretrained():
    ref_sd = _reference().state_dict()
    ours_sd = from_official(ref_sd)
    back = to_official(ours_sd)
    assert set(back) == {k for k in ref_sd if not k.startswith(UNUSED)}
    assert all(torch.equal(back[k], ref_sd[k]) for k in back)
    assert "head.weight" in ours_sd and ours_sd["head.weight"].shape == ref_sd["ar_pred.weight"].shape
    model = _ours()
    wrapped = {"model": {"module." + k: v for k, v in ref_sd.items()}, "epoch": 3}
    result = model.load_pretrained(wrapped)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.decoder_pos.pos_embed, ref_sd["decoder_pos_embed_learned"])
    kept = from_official(ref_sd, keep_unused=True)
    assert "cls_token" in kept and "neck.weight" in kept
    with pytest.raises(KeyError, match="no counterpart"):
        from_official({"surprise.weight": torch.zeros(1)})


OFFICIAL_COUNTS = {"tiny": 13_644_904, "small": 39_313_384, "base": 139_232_488, "large": None,
                   "huge": 798_157_288}


@pytest.mark.parametrize("size", list(SIZES))
def test_param_counts_match_official(size):
    name = f"map_{size}_patch16_224"
    if size in ("tiny", "small"):
        model = MODELS.get(name)()
    else:
        with torch.device("meta"):
            model = MODELS.get(name)()
    n = sum(p.numel() for p in model.parameters())
    embed_dim, depth, heads, n_cls, reduce = SIZES[size]
    assert len(model.encoder.layers) == depth and len(model.encoder.blocks) == depth // 3
    assert model.encoder.blocks[0].attn.num_heads == heads
    if OFFICIAL_COUNTS[size] is None:  # large: not buildable officially (12 heads vs 1024)
        assert n == 475_569_664
    else:
        assert n + official_unused_numel(embed_dim, n_cls, reduce) == OFFICIAL_COUNTS[size]


def test_names_registered_in_timm_and_registry():
    for size in SIZES:
        for name in (f"map_{size}_patch16_224", f"map_{size}_patch16_224_cls"):
            assert name in MODELS and timm.is_model(name)
    assert "map_pretrain" in MODELS and "map_classifier" in MODELS
    model = timm.create_model("map_tiny_patch16_224", img_size=32, patch_size=8, depth=3)
    assert isinstance(model, image.MAPImagePretrainer)
    with pytest.raises(KeyError, match="decoder_depth"):
        MODELS.get("map_tiny_patch16_224")(decoder_detph=2)


def test_cls_register_positions():
    order, positions = get_cls_idx(14, 14, 12)
    assert positions == tuple(range(15, 192, 16))  # 15, 31, ..., 191
    assert len(order) == 208 and sorted(order) == list(range(208))
    assert [order[p] for p in positions] == list(range(196, 208))
    assert order[192:] == tuple(range(180, 196))  # the 16 leftover patches close the sequence


def test_classifier_shapes_and_variants():
    torch.manual_seed(0)
    model = map_classifier(num_classes=5, num_cls_tokens=4, cls_reduce=2, drop_path_rate=0.0,
                           **TINY)
    imgs = torch.randn(2, 3, 32, 32)
    assert model.forward_features(imgs).shape == (2, 4 * 32)
    assert model(imgs).shape == (2, 5)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 5)  # other grid: registers re-placed
    # neck acts per cls token before norm_neck (Mamba-r order)
    seq, pos = model.sequence(imgs)
    cls_out = model.encoder(seq)[:, list(pos)]
    assert torch.allclose(model.forward_features(imgs), model.norm_neck(model.neck(cls_out).flatten(1)))
    groups = model.group_matcher()
    assert groups("tokenizer.pos_embed") == 0 and groups("encoder.blocks.0.attn.qkv.weight") == 4
    assert groups("head.weight") == len(model.encoder.layout) + 1
    assert variant_layout("mamba", 24).count("M") == 32 and variant_layout("transformer", 24) == "T" * 21
    vit = map_classifier(variant="transformer", num_classes=3, **TINY)
    assert "M" not in vit.encoder.layout and vit(imgs).shape == (2, 3)


def test_classifier_loads_pretraining_checkpoint_with_resize():
    torch.manual_seed(0)
    pre = _ours(decoder_dim=32)
    cls = map_classifier(img_size=48, patch_size=8, embed_dim=64, depth=6, num_heads=4, num_classes=3,
                         num_cls_tokens=4, cls_reduce=2)
    result = cls.load_pretrained({"model": pre.state_dict()})
    assert set(result.missing_keys) == {"cls_token", "pos_embed_cls", "neck.weight", "norm_neck.weight",
                                        "head.weight", "head.bias"}
    assert not result.unexpected_keys
    assert cls.tokenizer.pos_embed.shape == (1, 36, 64)
    assert torch.equal(cls.encoder.layers[2].mixer.x_proj_b.weight, pre.encoder.layers[2].mixer.x_proj_b.weight)
    # official names load the same way
    official = to_official(pre.state_dict())
    assert not cls.load_pretrained(official).unexpected_keys
    wrong = map_classifier(img_size=32, patch_size=8, embed_dim=32, depth=6, num_heads=4)
    with pytest.raises(CheckpointShapeError, match="encoder.layers.0"):
        wrong.load_pretrained(pre.state_dict())


@pytest.mark.slow
def test_tiny_map_overfits_one_batch():
    torch.manual_seed(0)
    model = map_pretrain(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, decoder_dim=32,
                         decoder_depth=1, decoder_heads=4, drop_path_rate=0.0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    imgs = torch.stack([torch.stack([torch.sin(6 * xx + i), torch.cos(5 * yy - i), xx * yy * i])
                        for i in range(4)])
    mask = _mask(4, 16, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(150):
        loss = model(imgs, mask)[0]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() <= 0.5 * first


def test_patch_embedding_is_timms_with_the_official_names_and_init():
    from timm.layers import PatchEmbed

    torch.manual_seed(0)
    tok = ImagePatchTokenizer(32, 8, 3, 16)
    assert isinstance(tok.patch_embed, PatchEmbed) and isinstance(tok.patch_embed.norm, torch.nn.Identity)
    assert sorted(tok.patch_embed.state_dict()) == ["proj.bias", "proj.weight"]
    # the init as before: the conv's default init, then lecun-normal weight and zero bias (same RNG draws)
    torch.manual_seed(0)
    proj = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8)
    timm.layers.lecun_normal_(proj.weight)
    torch.nn.init.zeros_(proj.bias)
    assert torch.equal(tok.patch_embed.proj.weight, proj.weight) and not tok.patch_embed.proj.bias.any()
    imgs = torch.randn(2, 3, 48, 40)  # another size than built for: a 6 x 5 grid
    with torch.no_grad():
        torch.testing.assert_close(tok.patch_embed(imgs), proj(imgs).flatten(2).transpose(1, 2))
