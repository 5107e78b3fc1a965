"""The one checkpoint path (``map_core.weights``): every wrapper layout unwraps the same way for the
engine, ``load_pretrained`` and both converters, and both modalities' official renamings go through
``load_weights``."""
from typing import Callable, Dict

import pytest
import torch
import torch.nn as nn

from image import convert as image_convert
from image.models import map_pretrain
from map_core.errors import UserError
from map_core.weights import CheckpointKeyError, extract_state_dict, load_weights
from pointcloud import convert as point_convert
from pointcloud.models import pointmap_pretrain
from tests.reference import official_pointmap as ref
from tests.reference.official_map2d import VisionMamba


class Net(nn.Module):
    """Keys: encoder.fc.weight, encoder.fc.bias, head.weight, head.bias."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential()
        self.encoder.add_module("fc", nn.Linear(3, 4))
        self.head = nn.Linear(4, 2)


def _prefixed(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


# every layout a checkpoint of ours, of DDP or of the official runners has come in
WRAPPERS: Dict[str, Callable] = {
    "bare": lambda sd: dict(sd),
    "model": lambda sd: {"model": sd, "epoch": 3, "optimizer": {"state": {}}},
    "base_model": lambda sd: {"base_model": sd, "epoch": 3},
    "state_dict": lambda sd: {"state_dict": sd},
    "ddp": lambda sd: {"model": _prefixed(sd, "module.")},
    "ddp_bare": lambda sd: _prefixed(sd, "module."),
    "runner_keys": lambda sd: _prefixed(sd, "base_model."),
    "ddp_in_runner": lambda sd: {"base_model": _prefixed(sd, "module.")},
    "runner_in_ddp": lambda sd: {"model": _prefixed(sd, "module.base_model.")},
}


def _official_image() -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return VisionMamba(img_size=32, patch_size=8, depth=6, embed_dim=64, num_heads=4, num_cls_tokens=4,
                       cls_reduce=2, num_classes=10, decoder_embed_dim=64, decoder_num_heads=4,
                       decoder_depth=2).state_dict()


def _official_points() -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return ref.Point_MAE(trans_dim=48, depth=3, num_heads=6, group_size=8, num_group=16, encoder_dims=48,
                         center_local_k=4, decoder_depth=1).state_dict()


def _same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(a[k] is b[k] for k in a)


@pytest.mark.parametrize("layout", list(WRAPPERS))
def test_every_wrapper_layout_unwraps_the_same_for_every_consumer(layout):
    wrap = WRAPPERS[layout]
    net = Net()
    weights = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    assert _same(extract_state_dict(wrap(weights)), weights)
    # the engine / load_pretrained path
    result = load_weights(net, wrap(weights), "'net.pth'")
    assert result.loaded_keys == list(weights) and not (result.missing_keys or result.unexpected_keys
                                                        or result.skipped_keys)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    # both converters see the same state dict
    image_sd, point_sd = _official_image(), _official_points()
    assert _same(image_convert.from_official(wrap(image_sd)), image_convert.from_official(image_sd))
    assert _same(point_convert.from_official(wrap(point_sd)), point_convert.from_official(point_sd))


def test_ambiguous_prefixes_are_stripped_only_when_the_model_says_so():
    net = Net()
    weights = net.state_dict()
    # a detection-style ``backbone.`` and a model saved as the ``encoder`` of a bigger one
    for prefix in ("backbone.", "encoder."):
        ckpt = {"model": _prefixed(weights, prefix)}
        assert set(extract_state_dict(ckpt)) == set(_prefixed(weights, prefix))  # no model keys: kept
        assert load_weights(Net(), ckpt).loaded_keys == list(weights)
    # a checkpoint of the model's own encoder keeps its ``encoder.`` names (stripping would fit nothing)
    encoder_only = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    result = load_weights(Net(), encoder_only)
    assert result.loaded_keys == ["encoder.fc.weight", "encoder.fc.bias"]
    assert result.missing_keys == ["head.weight", "head.bias"] and not result.unexpected_keys
    # official Point-MAE names start with ``encoder.`` (the mini-PointNet): the converter keeps them
    first_conv = {"encoder.first_conv.0.weight": torch.zeros(1)}
    assert list(point_convert.from_official(first_conv)) == ["tokenizer.encoder.first_conv.0.weight"]


def test_both_modalities_official_renamings_go_through_load_weights():
    # image: the official MAP 2D pretraining model in a DDP {"model": ...} file
    official = _official_image()
    model = map_pretrain(img_size=32, patch_size=8, embed_dim=64, depth=6, num_heads=4, decoder_dim=64,
                         decoder_depth=2, decoder_heads=4)
    result = load_weights(model, {"model": _prefixed(official, "module."), "epoch": 3}, "'map2d.pth'")
    unused = ["cls_token", "pos_embed_cls", "neck.weight", "norm_neck.weight", "head.weight", "head.bias"]
    assert sorted(result.skipped_keys) == sorted(unused)  # the classifier parameters pretraining never uses
    assert not result.missing_keys and not result.unexpected_keys
    assert sorted(result.loaded_keys) == sorted(model.state_dict())
    own = model.state_dict()
    for key, value in official.items():
        if key not in unused:
            assert torch.equal(own[image_convert.official_key(key)], value), key
    assert torch.equal(own["head.weight"], official["ar_pred.weight"])
    # points: the official Point_MAE pretraining model in a runner {"base_model": ...} file
    official = _official_points()
    model = pointmap_pretrain(trans_dim=48, depth=3, num_heads=6, group_size=8, num_group=16, encoder_dims=48,
                              center_local_k=4, decoder_depth=1)
    result = load_weights(model, {"base_model": official}, "'pointmae.pth'")
    assert sorted(result.skipped_keys) == ["MAE_encoder.cls_pos", "MAE_encoder.cls_token"]
    assert not result.missing_keys and not result.unexpected_keys
    own = model.state_dict()
    for key, value in official.items():
        if key not in result.skipped_keys:
            assert torch.equal(own[point_convert.official_key(key)], value), key
    assert torch.equal(own["tokenizer.encoder.first_conv.0.weight"], official["MAE_encoder.encoder.first_conv.0.weight"])


def test_renaming_errors_name_the_checkpoint_in_both_modalities():
    image_model = map_pretrain(img_size=32, patch_size=8, embed_dim=64, depth=6, num_heads=4, decoder_dim=64,
                               decoder_depth=2, decoder_heads=4)
    with pytest.raises(CheckpointKeyError, match=r"'map2d.pth': official checkpoint key 'surprise.weight'"):
        load_weights(image_model, {**_official_image(), "surprise.weight": torch.zeros(1)}, "'map2d.pth'")
    points = _official_points()
    twice = {**points, "blocks.blocks.0.norm1.weight": points["MAE_encoder.blocks.blocks.0.norm1.weight"]}
    point_model = pointmap_pretrain(trans_dim=48, depth=3, num_heads=6, group_size=8, num_group=16,
                                    encoder_dims=48, center_local_k=4, decoder_depth=1)
    with pytest.raises(UserError, match=r"'pointmae.pth': two checkpoint keys map to 'encoder.blocks.blocks.0"):
        load_weights(point_model, twice, "'pointmae.pth'")
    with pytest.raises(UserError, match=r"'empty.pth'.*found 'epoch', 'optimizer'"):
        load_weights(point_model, {"epoch": 3, "optimizer": {"state": {}}}, "'empty.pth'")
