"""The objective switch (map / mae / ar): masks by hand, config errors, and perturbation tests that
show what each prediction may depend on, for both modalities."""
import pytest
import torch

from map_core.engine.schema import load_experiment
from map_core.errors import ConfigError
from map_core.masking import mask_to_indices
from map_core.mixers import MambaMixer
from map_core.objective import Objective, RowCausal
from pointcloud.models import pointmap_pretrain

import image  # noqa: F401  (registers the image models)
from image.models import map_pretrain

ROW = 4  # both tiny models: 16 tokens in rows of 4


def _image_model(objective: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, decoder_dim=32, decoder_depth=2,
                decoder_heads=4, drop_path_rate=0.0)
    return map_pretrain(**{**args, **kw}, objective=objective).eval()


def _point_model(objective: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(trans_dim=48, depth=3, num_heads=6, group_size=8, num_group=16, encoder_dims=48, center_local_k=4,
                drop_path=0.0, decoder_depth=2, decoder_drop_path=0.0)
    return pointmap_pretrain(**{**args, **kw}, objective=objective).eval()


def _inputs(modality: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if modality == "image":
        return torch.randn(2, 3, 16, 16, generator=g)
    d = torch.randn(2, 128, 3, generator=g)
    return d / d.norm(dim=-1, keepdim=True) * (0.3 + 0.7 * torch.rand(2, 128, 1, generator=g))


MODELS = {"image": _image_model, "points": _point_model}


def _with_tokens_changed(model: torch.nn.Module, change) -> None:
    """Make ``model.tokenizer`` apply ``change(tokens)`` to what it returns."""
    forward = type(model.tokenizer).forward

    def changed(self, inputs):
        tok = forward(self, inputs)
        change(tok)
        return tok

    model.tokenizer.forward = changed.__get__(model.tokenizer)


# ---------------------------------------------------------------- the unit itself
def test_decoder_masks_by_hand():
    allowed = torch.tensor([[k // 2 <= q // 2 for k in range(6)] for q in range(6)])
    assert torch.equal(Objective("map", 6, 2).decoder_mask(), allowed)
    assert torch.equal(Objective("ar", 6, 2).decoder_mask(), allowed)
    assert Objective("mae", 6, 2).decoder_mask() is None
    assert Objective("ar", 6, 2).predicted_rows(1).tolist() == [[False, False, True, True, True, True]]
    assert Objective("ar", 6, 2).encoder_causality == RowCausal(2) and Objective("map", 6, 2).encoder_causality is None


def test_map_and_mae_draw_the_same_masks():
    for ratio, std in ((0.6, 0.0), (0.5, 0.25)):
        masks = [Objective(name, 16, 4, ratio, std).sample_mask(3, generator=torch.Generator().manual_seed(2))
                 for name in ("map", "mae")]
        assert torch.equal(masks[0], masks[1]) and masks[0].sum(1).unique().numel() == 1
    with pytest.raises(ValueError, match="does not mask"):
        Objective("ar", 16, 4).sample_mask(2)


@pytest.mark.parametrize("kwargs,key,what", [
    (dict(mask_ratio=0.0), "model.mask_ratio", "none"),
    (dict(mask_ratio=0.05, mask_rounding="floor"), "model.mask_ratio", "none"),  # int(0.8) = 0
    (dict(mask_ratio=1.0), "model.mask_ratio", "all"),
    (dict(mask_ratio=0.5, mask_ratio_std=0.25, mask_ratio_bounds=(0.0, 0.7)), "model.mask_ratio_bounds", "none"),
])
def test_a_ratio_that_cannot_train_is_a_config_error(kwargs, key, what):
    for name in ("map", "mae"):
        with pytest.raises(ConfigError, match=rf"{key}=.* masks {what} of the 16 tokens"):
            Objective(name, 16, 4, **kwargs)
    Objective("ar", 16, 4, **kwargs)  # ar does not mask: the ratio is not used


def test_factories_raise_the_config_error_and_unknown_names():
    with pytest.raises(ConfigError, match="model.mask_ratio=0.0 masks none"):
        _point_model("map", mask_ratio=0.0)
    with pytest.raises(ConfigError, match="model.mask_ratio=0.0 masks none"):
        _image_model("mae", mask_ratio=0.0, mask_ratio_std=0.0)
    with pytest.raises(ConfigError, match="model.objective: expected one of map, mae, ar"):
        _image_model("mim")
    with pytest.raises(ConfigError, match="model.center_local_k=5"):
        _point_model("ar", center_local_k=5)


@pytest.mark.parametrize("config", ["configs/demo/image_pretrain.yaml", "configs/demo/pointmap_pretrain.yaml"])
@pytest.mark.parametrize("objective", ["mae", "ar"])
def test_objective_is_one_config_key(config, objective):
    cfg = load_experiment(config, [f"model.objective={objective}"])
    from map_core.registry import MODELS as REGISTRY

    model = REGISTRY.build(cfg.model)
    assert model.objective.name == objective


# ---------------------------------------------------------------- whole models
@pytest.mark.parametrize("modality", ["image", "points"])
@pytest.mark.parametrize("objective", ["map", "mae", "ar"])
def test_loss_is_finite_and_trains(modality, objective):
    model = MODELS[modality](objective).train()
    loss, pred, predicted = model(_inputs(modality))
    assert torch.isfinite(loss) and pred.shape[:2] == predicted.shape == (2, 16)
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0  # the encoder is trained by every objective


@pytest.mark.parametrize("modality", ["image", "points"])
def test_ar_loss_covers_rows_after_the_first(modality):
    model = MODELS[modality]("ar")
    with torch.no_grad():
        loss, pred, predicted = model(_inputs(modality))
        target = model.tokenizer(_inputs(modality)).target
    assert predicted[:, :ROW].sum() == 0 and predicted[:, ROW:].all()
    torch.testing.assert_close(loss, model.loss_fn(pred[:, ROW:], target[:, ROW:]))
    with pytest.raises(ValueError, match="does not take a mask"):
        model(_inputs(modality), torch.zeros(2, 16, dtype=torch.bool))


@pytest.mark.parametrize("modality", ["image", pytest.param("points", marks=pytest.mark.slow)])
def test_ar_prediction_of_row_r_depends_on_rows_before_r_only(modality):
    """Changing the token features of row r changes no prediction of rows <= r and changes every
    later row. The group centres of row r are where row r is predicted (the decoder's query
    positions, as for the masked groups of map / mae): moving them changes no earlier row."""
    inputs = _inputs(modality)
    with torch.no_grad():
        base = MODELS[modality]("ar")(inputs)[1]
        tokens = MODELS[modality]("ar").tokenizer(inputs)
    g = torch.Generator().manual_seed(3)
    kinds = ["x", "coords"] if modality == "points" else ["x"]
    for kind in kinds:
        for r in range(4):
            model = MODELS[modality]("ar")
            bump = torch.randn(ROW, getattr(tokens, kind).shape[-1], generator=g) * (0.1 if kind == "coords" else 1)

            def change(tok, r=r, bump=bump, kind=kind):
                value = getattr(tok, kind).clone()
                value[:, r * ROW:(r + 1) * ROW] += bump
                setattr(tok, kind, value)

            _with_tokens_changed(model, change)
            with torch.no_grad():
                out = model(inputs)[1]
            end = (r + 1) * ROW if kind == "x" else r * ROW  # first row allowed to change
            torch.testing.assert_close(out[:, :end], base[:, :end], rtol=0, atol=1e-6)
            if end < 16:
                changed = (out[:, end:] - base[:, end:]).abs().amax(-1)
                assert (changed > 1e-5).all(), (kind, r, changed)


def test_ar_image_rows_are_pixel_rows():
    """The same property from raw pixels: rewriting image row r (4 pixel rows) changes no
    prediction of patch rows <= r."""
    model, imgs = _image_model("ar"), _inputs("image")
    with torch.no_grad():
        base = model(imgs)[1]
        for r in range(3):
            changed = imgs.clone()
            changed[:, :, 4 * r:4 * r + 4] = torch.rand(2, 3, 4, 16)
            out = model(changed)[1]
            torch.testing.assert_close(out[:, :(r + 1) * ROW], base[:, :(r + 1) * ROW], rtol=0, atol=1e-6)
            assert not torch.allclose(out[:, (r + 1) * ROW:], base[:, (r + 1) * ROW:])


@pytest.mark.parametrize("modality", ["image", "points"])
@pytest.mark.parametrize("objective", ["map", "mae"])
def test_decoder_mask_by_moving_one_masked_position(modality, objective):
    """Move the decoder position of one masked token (its patch's learned decoder position; its
    group centre, which the encoder never sees). In decoder order: ``map`` changes no prediction of
    an earlier row and every prediction from that row on; ``mae`` changes every prediction."""
    inputs = _inputs(modality)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [1, 2, 6, 9, 13, 14]] = True  # 10 visible, 6 masked in both samples
    keep, masked = mask_to_indices(mask)
    model = MODELS[modality](objective)
    with torch.no_grad():
        base = model(inputs, mask)[1]
        token = 9  # masked; image decoder order = token order, point order = [visible; masked]
        if modality == "image":
            model.decoder_pos.pos_embed[0, token] += torch.randn(32, generator=torch.Generator().manual_seed(4))
            order = torch.arange(16).expand(2, -1)
        else:
            def change(tok):
                tok.coords = tok.coords.clone()
                tok.coords[:, token] += 0.2

            _with_tokens_changed(model, change)
            order = torch.cat([keep, masked], dim=1)
        out = model(inputs, mask)[1]
    diff = (out - base).abs().amax(-1).gather(1, order)  # per decoder position
    slot = (order == token).float().argmax(1)  # decoder position of the moved token
    for b in range(2):
        first = (int(slot[b]) // ROW) * ROW
        if objective == "map":
            assert diff[b, :first].max() < 1e-6
            assert (diff[b, first:] > 1e-6).all()
        else:
            assert (diff[b] > 1e-6).all()


# ---------------------------------------------------------------- the causal encoder parts
def test_sequence_mamba_causal_mode_is_half_the_forward_scan():
    torch.manual_seed(0)
    bi = MambaMixer(16, bidirectional="sequence")
    h = torch.randn(2, 7, 16)
    h2 = h.clone()
    h2[:, 4] += 1
    torch.testing.assert_close(bi(h2, causal=True)[:, :4], bi(h, causal=True)[:, :4])
    assert not torch.allclose(bi(h2)[:, :4], bi(h)[:, :4])  # the full mixer looks back from the end
    one_way = MambaMixer(16)
    one_way.load_state_dict({k: v for k, v in bi.state_dict().items() if k in one_way.state_dict()})
    with torch.no_grad():
        one_way.out_proj.weight.mul_(0.5)
    torch.testing.assert_close(bi(h, causal=True), one_way(h), rtol=1e-5, atol=1e-6)


def test_row_causal_knn_and_std():
    center = torch.tensor([[[0.0, 0, 0], [5, 0, 0], [1, 0, 0], [0.5, 0, 0], [4, 0, 0], [2, 0, 0]]])
    causal = RowCausal(row_len=2)
    idx = causal.nearest(center, 2)
    # row 0 = {0, 1}; row 1 adds {2, 3}; row 2 adds {4, 5}: nearest allowed, self first
    assert idx[0].tolist() == [[0, 1], [1, 0], [2, 3], [3, 0], [4, 1], [5, 2]]
    with pytest.raises(ValueError, match="k=3"):
        causal.nearest(center, 3)
    diff = torch.randn(3, 6, 2, 5)
    std = causal.cumulative_std(diff)
    for r in range(3):
        want = diff[:, :2 * (r + 1)].std()
        torch.testing.assert_close(std[0, 2 * r:2 * r + 2, 0, 0], want.expand(2), rtol=1e-5, atol=1e-6)
