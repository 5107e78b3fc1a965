"""Encoder variants (hybrid / pure Mamba / pure Transformer) at matched parameter counts, for both
modalities, selectable by ``model.variant`` in pretraining and finetuning alike."""
import pytest
import torch

import image  # noqa: F401  (registers the image models)
from image.classifier import map_classifier
from image.models import map_pretrain
from map_core.encoder import matched_layout
from map_core.errors import ConfigError
from pointcloud.models import PointMAPClassifier, pointmap_pretrain

VARIANTS = ("hybrid", "mamba", "transformer")


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_matched_layout_rounds_to_the_nearest_count():
    # hybrid of depth 6: 6 M (10 each) + 2 T (25 each) = 110
    assert matched_layout("hybrid", 6, 10, 25) == "MMMTMMMT"
    assert matched_layout("mamba", 6, 10, 25) == "M" * 11
    assert matched_layout("transformer", 6, 10, 25) == "T" * 4  # 110 / 25 = 4.4
    assert matched_layout("transformer", 6, 10, 25, block_numel=40) == "T" * 3  # 2.75
    with pytest.raises(ConfigError, match="model.variant"):
        matched_layout("rwkv", 6, 10, 25)


# the encoder counts stated in image.models.variant_layout and pointcloud.blocks.variant_layout
IMAGE_COUNTS = {(96, 3): {"hybrid": ("MMMT", 318_240), "mamba": ("M" * 4, 324_576), "transformer": ("T" * 3, 335_712)},
                (192, 24): {"hybrid": ("MMMT" * 8, 9_145_536), "mamba": ("M" * 32, 9_025_728),
                            "transformer": ("T" * 21, 9_342_528)}}
POINT_COUNTS = {(96, 3): {"hybrid": ("MMMT", 433_536), "mamba": ("M" * 4, 403_008), "transformer": ("T" * 3, 393_888)},
                (384, 12): {"hybrid": ("MMMT" * 4, 24_407_808), "mamba": ("M" * 18, 24_172_032),
                            "transformer": ("T" * 12, 24_879_360)}}


@pytest.mark.parametrize("size", list(IMAGE_COUNTS))
def test_image_variant_counts(size):
    dim, depth = size
    with torch.device("meta"):
        for variant, (layout, count) in IMAGE_COUNTS[size].items():
            encoder = map_classifier(variant=variant, embed_dim=dim, depth=depth, num_heads=4, num_classes=10,
                                     img_size=32, patch_size=4, num_cls_tokens=4).encoder
            assert (encoder.layout, _numel(encoder)) == (layout, count)
            # within half a layer of the hybrid
            assert abs(count - IMAGE_COUNTS[size]["hybrid"][1]) < 0.5 * count / len(layout)


@pytest.mark.parametrize("size", list(POINT_COUNTS))
def test_point_variant_counts(size):
    dim, depth = size
    with torch.device("meta"):
        for variant, (layout, count) in POINT_COUNTS[size].items():
            encoder = PointMAPClassifier(variant=variant, trans_dim=dim, encoder_dims=dim, depth=depth,
                                          num_heads=6, num_group=64).encoder
            assert (encoder.blocks.layout, _numel(encoder)) == (layout, count)
            assert abs(count - POINT_COUNTS[size]["hybrid"][1]) < 0.5 * count / len(layout)


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_pretraining_weights_load_into_the_classifier(variant):
    torch.manual_seed(0)
    sizes = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4)
    pre = map_pretrain(**sizes, decoder_dim=32, decoder_depth=1, decoder_heads=4, variant=variant)
    clf = map_classifier(**sizes, num_classes=3, num_cls_tokens=2, variant=variant)
    assert clf.encoder.layout == pre.encoder.layout
    result = clf.load_pretrained(pre.state_dict())
    assert set(result.missing_keys) == {"cls_token", "pos_embed_cls", "head.weight", "head.bias"}
    for name, value in pre.encoder.state_dict().items():
        assert torch.equal(clf.encoder.state_dict()[name], value), name
    assert clf(torch.randn(2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_point_pretraining_weights_load_into_the_classifier(variant):
    torch.manual_seed(0)
    sizes = dict(trans_dim=48, depth=3, num_heads=6, group_size=8, num_group=16, encoder_dims=48)
    pre = pointmap_pretrain(**sizes, decoder_depth=1, variant=variant)
    clf = PointMAPClassifier(**sizes, num_classes=5, variant=variant)
    assert clf.encoder.blocks.layout == pre.encoder.blocks.layout
    result = clf.load_pretrained(pre.state_dict())
    assert {k.split(".")[0] for k in result.missing_keys} == {"cls_token", "cls_pos", "cls_head_finetune"}
    for name, value in pre.encoder.state_dict().items():
        assert torch.equal(clf.encoder.state_dict()[name], value), name
    pts = torch.randn(2, 128, 3)
    assert clf.eval()(pts).shape == (2, 5)
