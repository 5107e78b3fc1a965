"""Part segmentation on ShapeNetPart: encoder taps, the reader on tiny files in the real format,
feature propagation, the model, the mIoU metrics and a two-epoch run through tools/train.py."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from map_core.config import Config
from map_core.engine.checkpoint import atomic_save
from map_core.errors import ConfigError, UserError
from map_core.registry import DATASETS, MODELS
from pointcloud.blocks import PointMAPEncoder
from pointcloud.data import DataError, ShapeNetPart
from pointcloud.data.transforms import isotropic_scale_and_shift
from pointcloud.models import pointmap_pretrain
from pointcloud.partseg import PointMAPPartSeg, three_nn_interpolate
from pointcloud.tasks import PointPartSegTask, category_part_mask, shape_miou
from tools.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------- the reader, on the real format
SYNSETS = {  # synsetoffset2category.txt of the release, in its order
    "Airplane": "02691156", "Bag": "02773838", "Cap": "02954340", "Car": "02958343", "Chair": "03001627",
    "Earphone": "03261776", "Guitar": "03467517", "Knife": "03624134", "Lamp": "03636649", "Laptop": "03642806",
    "Motorbike": "03790512", "Mug": "03797390", "Pistol": "03948459", "Rocket": "04099429",
    "Skateboard": "04225987", "Table": "04379243"}
PARTS = {"Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Mug": [36, 37]}


def write_shape(root: Path, category: str, model: str, xyz: np.ndarray, labels: np.ndarray) -> Path:
    """One '<synset>/<model>.txt' as in the release: 'x y z nx ny nz part', 6 decimals, label as a float."""
    normals = np.random.default_rng(len(xyz)).normal(size=xyz.shape)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    path = root / SYNSETS[category] / f"{model}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.column_stack([xyz, normals, labels]), fmt="%.6f")
    return path


def write_dataset(root: Path, splits: Dict[str, List[Tuple[str, str]]], points: int = 40, seed: int = 0) -> Path:
    """ShapeNetPart layout under root; splits: split -> [(category, model id)]. Part = height band
    of the shape (y sorted into len(parts) equal bands), so the labels are learnable."""
    rng = np.random.default_rng(seed)
    (root / "train_test_split").mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{s}\n" for c, s in SYNSETS.items()))
    for split, shapes in splits.items():
        entries = [f"shape_data/{SYNSETS[c]}/{m}" for c, m in shapes]
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
        for category, model in shapes:
            xyz = rng.normal(size=(points, 3)) * [1.0, 2.0, 0.5] + rng.normal(size=3)
            parts = PARTS[category]
            band = np.digitize(xyz[:, 1], np.quantile(xyz[:, 1], np.linspace(0, 1, len(parts) + 1)[1:-1]))
            write_shape(root, category, model, xyz, np.asarray(parts)[band])
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal", {
        "train": [("Mug", "m2"), ("Airplane", "a1"), ("Bag", "b1")],
        "val": [("Airplane", "a0")],
        "test": [("Mug", "m9"), ("Bag", "b7")]})


def _normalised_rows(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path)
    xyz = table[:, :3] - table[:, :3].mean(axis=0)
    return xyz / np.sqrt((xyz ** 2).sum(axis=1)).max(), table[:, 6].astype(int)


def test_reader_splits_categories_and_order(tiny: Path):
    train = ShapeNetPart(root=tiny, split="train", npoints=64)
    assert train.categories == list(SYNSETS) and len(train.category_parts) == 16
    assert [train.category_parts[i] for i in (0, 1, 11, 15)] == [[0, 1, 2, 3], [4, 5], [36, 37], [47, 48, 49]]
    assert sorted(p for parts in train.category_parts for p in parts) == list(range(50))
    assert train.shapes == [(0, "a1"), (1, "b1"), (11, "m2")]  # by category (file order), then model id
    assert ShapeNetPart(root=tiny, split="trainval", npoints=64).shapes == [(0, "a0"), (0, "a1"), (1, "b1"), (11, "m2")]
    assert ShapeNetPart(root=tiny, split="test", npoints=64).shapes == [(1, "b7"), (11, "m9")]
    assert "ShapeNetPart" in DATASETS


def test_reader_normalises_then_samples_rows_with_replacement(tiny: Path):
    """Each sampled point is an exact row of the normalised file, with that row's label; rows repeat."""
    test = ShapeNetPart(root=tiny, split="test", npoints=30)
    points, category, labels = test[1]
    assert points.shape == (30, 3) and points.dtype == torch.float32
    assert category.dtype == torch.long and int(category) == 11 and labels.shape == (30,)
    xyz, truth = _normalised_rows(tiny / "03797390" / "m9.txt")
    dist = ((points.double().numpy()[:, None] - xyz[None]) ** 2).sum(-1)  # (30, 40)
    row = dist.argmin(1)
    assert dist.min(1).max() < 1e-10
    assert np.array_equal(labels.numpy(), truth[row])
    assert len(np.unique(row)) < 30  # drawn with replacement (30 of 40 rows without a repeat: p ~ 1e-6)
    assert ShapeNetPart(root=tiny, split="test", npoints=64)[1][0].shape == (64, 3)  # more than the 40 rows
    assert torch.equal(test[1][0], points)  # evaluation splits draw the same rows every time
    train = ShapeNetPart(root=tiny, split="train", npoints=64)
    torch.manual_seed(0)
    first = train[0][0]
    assert not torch.equal(first, train[0][0])  # training splits draw anew


@pytest.mark.parametrize("content, match", [
    ("", "empty file"),
    ("0.1 0.2 0.3 0 0 1 36.000000\n0.1 0.2 0.3 0 0 1\n", "expected rows of 7 numbers"),
    ("0.1 0.2 0.3 0 0 1\n0.4 0.2 0.3 0 0 1\n", "expected 7 columns .* found 6"),
    ("0.1 0.2 0.3 0 0 1 36.000000\n0.4 0.2 0.3 0 0 1 4.000000\n", r"row 2: part label 4 is not one of Mug's parts \[36, 37\]"),
    ("0.1 0.2 0.3 0 0 1 36.500000\n", "part label 36.5 is not one of Mug"),
    ("0.1 nan 0.3 0 0 1 36.000000\n", "non-finite"),
])
def test_reader_bad_files_name_the_file(tiny: Path, content: str, match: str):
    bad = tiny / "03797390" / "m9.txt"
    bad.write_text(content)
    test = ShapeNetPart(root=tiny, split="test", npoints=8)
    test[0]  # the Bag shape is fine
    with pytest.raises(DataError, match=match) as err:
        test[1]
    assert str(bad) in str(err.value)


def test_reader_bad_layout(tiny: Path):
    (tiny / "02773838" / "b7.txt").unlink()
    with pytest.raises(DataError, match=r"1 of 2 listed shape files are missing \(first: .*b7.txt\)"):
        ShapeNetPart(root=tiny, split="test")
    table = {name: [i] for i, name in enumerate(SYNSETS) if name != "Mug"}
    with pytest.raises(DataError, match="categories \\['Mug'\\] have no part labels"):
        ShapeNetPart(root=tiny, split="train", category_parts=table)
    with pytest.raises(ConfigError, match="part 1 belongs to both 'Airplane' and 'Bag'"):
        ShapeNetPart(root=tiny, split="train", category_parts={**table, "Airplane": [0, 1], "Mug": [20]})
    lists = tiny / "train_test_split" / "shuffled_val_file_list.json"
    lists.write_text(json.dumps(["shape_data/02691156/a0", "02691156/a1"]))
    with pytest.raises(DataError, match="shuffled_val_file_list.json, entry 1: expected 'shape_data/<synset>/<model id>'"):
        ShapeNetPart(root=tiny, split="val")
    lists.write_text(json.dumps(["shape_data/09999999/t0"]))
    with pytest.raises(DataError, match="entry 0: synset '09999999' is not in .*synsetoffset2category.txt"):
        ShapeNetPart(root=tiny, split="val")
    with pytest.raises(ConfigError, match="split must be one of"):
        ShapeNetPart(root=tiny, split="validation")


@pytest.mark.slow
def test_check_data_script(tiny: Path):
    script = [sys.executable, str(REPO / "datasets" / "check_data.py"), "--root", str(tiny.parent), "--only",
              "shapenetpart"]
    good = subprocess.run(script, capture_output=True, text=True)
    assert good.returncode == 0, good.stdout
    assert "train: 3 shapes" in good.stdout
    (tiny / "02773838" / "b7.txt").unlink()
    write_shape(tiny, "Mug", "m2", np.zeros((3, 3)), np.array([36, 37, 50]))  # the first Mug file
    broken = subprocess.run(script, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "ShapeNetPart test: 1 of 2 listed shape files are missing (first: " in broken.stdout
    assert "b7.txt" in broken.stdout
    assert "shapes of the train list are rejected (first: " in broken.stdout and "m2.txt" in broken.stdout


# ---------------------------------------------------------------- feature propagation and the model
TINY_MODEL = dict(trans_dim=24, depth=3, num_heads=4, group_size=8, num_group=9, encoder_dims=24, pointnet_width=16)


def test_three_nn_interpolate_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    xyz, centers, feats = torch.randn(2, 30, 3, generator=g), torch.randn(2, 7, 3, generator=g), torch.randn(2, 7, 5, generator=g)
    centers[1, 4] = xyz[1, 9]  # a point on a centre takes (almost) only that centre's feature
    out = three_nn_interpolate(xyz, centers, feats)
    expect = torch.zeros(2, 30, 5, dtype=torch.float64)
    for b in range(2):
        for n in range(30):
            d2 = [float(((xyz[b, n] - centers[b, j]) ** 2).sum()) for j in range(7)]
            nearest = sorted(range(7), key=lambda j: d2[j])[:3]
            w = [1 / (d2[j] + 1e-8) for j in nearest]
            for j, wj in zip(nearest, w):
                expect[b, n] += wj / sum(w) * feats[b, j].double()
    torch.testing.assert_close(out, expect.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1, 9], feats[1, 4], rtol=0, atol=1e-5)


def test_default_sizes_follow_point_mae():
    """Widths of Point-MAE's segmentation head with 3 x 384 tapped channels, and the parameter count."""
    with torch.device("meta"):
        model = MODELS.get("pointmap_partseg")()
    assert model.fetch_layers == [3, 7, 11]
    assert model.tokenizer.num_group == 128 and model.tokenizer.group_size == 32
    assert [c.in_channels for c in model.propagation_0.mlp_convs] == [1155, 1536]
    assert model.propagation_0.mlp_convs[-1].out_channels == 1024
    assert (model.label_conv[0].in_channels, model.label_conv[0].out_channels) == (16, 64)
    assert [model.convs1.in_channels, model.convs2.in_channels, model.convs3.in_channels] == [3392, 512, 256]
    assert model.convs3.out_channels == 50
    assert sum(p.numel() for p in model.parameters()) == 30_191_026
    assert PointMAPPartSeg(**{**TINY_MODEL, "depth": 6}).fetch_layers == [1, 3, 5]
    with pytest.raises(ValueError, match=r"blocks 0\.\.2, got \[1, 3\]"):
        PointMAPPartSeg(**TINY_MODEL, fetch_layers=[1, 3])
    with pytest.raises(ValueError, match="set fetch_layers"):
        PointMAPPartSeg(**{**TINY_MODEL, "depth": 2})


def test_forward_backward_on_cpu():
    torch.manual_seed(0)
    model = PointMAPPartSeg(num_parts=6, num_categories=2, **TINY_MODEL)
    pts, category = torch.randn(3, 64, 3), torch.tensor([0, 1, 1])
    logits = model(pts, category)
    assert logits.shape == (3, 64, 6) and torch.isfinite(logits).all()
    F.cross_entropy(logits.reshape(-1, 6), torch.randint(0, 6, (3 * 64,))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    model.eval()
    with torch.no_grad():  # the category one-hot reaches the logits of every point
        other = model(pts, torch.tensor([1, 1, 1]))
        same = model(pts, category)
    assert not torch.allclose(other[0], same[0]) and torch.equal(other[1:], same[1:])


def test_loads_pretrained_pointmap_encoder_ours_and_official():
    torch.manual_seed(0)
    pretrain = pointmap_pretrain(**TINY_MODEL, decoder_depth=1)
    ours = pretrain.state_dict()
    for name, weights in (("ours", ours), ("official", {"module.MAE_encoder." + _official_name(k): v
                                                        for k, v in ours.items() if k.startswith(("tokenizer.", "encoder."))})):
        model = PointMAPPartSeg(**TINY_MODEL)
        result = model.load_pretrained(weights)
        missing, unexpected = result.missing_keys, result.unexpected_keys
        loaded = model.state_dict()
        for key, value in ours.items():
            if key.startswith(("tokenizer.", "encoder.")):
                assert torch.equal(loaded[key], value), (name, key)
        assert {k.split(".")[0] for k in missing} == {"label_conv", "propagation_0", "convs1", "bns1", "convs2",
                                                      "bns2", "convs3"}, name
        assert not [k for k in unexpected if k.startswith(("tokenizer.", "encoder."))], name


def _official_name(key: str) -> str:
    """Our tokeniser / encoder key -> the official Point_MAE name (inside MAE_encoder)."""
    for ours, official in (("tokenizer.encoder.", "encoder."), ("tokenizer.pos_embed.", "pos_embed."),
                           ("encoder.blocks.", "blocks."), ("encoder.norm.", "norm.")):
        if key.startswith(ours):
            return official + key[len(ours):]
    raise KeyError(key)


# ---------------------------------------------------------------- metrics and the task
class _Shapes(torch.utils.data.Dataset):
    """Three 4-point shapes; category 0 owns parts [0, 1], category 1 owns [2, 3, 4]."""

    categories = ["A", "B"]
    category_parts = [[0, 1], [2, 3, 4]]
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 4, 4]])
    category = torch.tensor([0, 1, 1])

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(4, 3), self.category[i], self.target[i]


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, points, category):
        return self.logits


def test_miou_against_hand_computed_values():
    pred = torch.tensor([[0, 1, 1, 1], [2, 3, 3, 3], [2, 2, 2, 2]])
    logits = 5.0 * F.one_hot(pred, 5).float()
    logits[0, :, 4] = 10.0  # a part of the other category scores best: ignored in evaluation
    logits[2, :, 0] = 10.0
    # shape 0 (A): part 0 1/2, part 1 2/3                        -> 7/12
    # shape 1 (B): part 2 1/2, part 3 2/3, part 4 absent from both -> IoU 1 -> 13/18
    # shape 2 (B): part 2 0/4, part 3 absent from both (1), part 4 0/4 -> 1/3
    shape = [7 / 12, 13 / 18, 1 / 3]
    task = PointPartSegTask({})
    loader = torch.utils.data.DataLoader(_Shapes(), batch_size=3)
    metrics = task.evaluate(_FixedLogits(logits), loader)
    assert metrics["instance_miou"] == pytest.approx(100 * sum(shape) / 3)
    assert metrics["class_miou"] == pytest.approx(100 * (shape[0] + (shape[1] + shape[2]) / 2) / 2)
    assert metrics["accuracy"] == pytest.approx(100 * 6 / 12)
    expect_loss = F.cross_entropy(logits.reshape(-1, 5), _Shapes.target.reshape(-1))
    assert metrics["loss"] == pytest.approx(expect_loss.item(), rel=1e-6)
    allowed = category_part_mask(_Shapes.category_parts, 5)[_Shapes.category]
    torch.testing.assert_close(shape_miou(pred, _Shapes.target, allowed), torch.tensor(shape, dtype=torch.float64))


def test_task_checks_model_sizes_against_the_dataset(tiny: Path):
    dataset = {"NAME": "ShapeNetPart", "root": str(tiny), "split": "test"}
    task = PointPartSegTask(Config({"model": {"NAME": "pointmap_partseg", **TINY_MODEL, "num_parts": 40},
                                    "dataset": {"val": dataset}}))
    assert task.build_dataset("val").category_parts[15] == [47, 48, 49]
    with pytest.raises(ConfigError, match="num_parts=40, but the dataset has 16 categories and part labels up to 49"):
        task.build_model()
    task = PointPartSegTask(Config({"dataset": {"val": {"NAME": "ShapeNet", "data_path": str(tiny),
                                                        "pc_path": str(tiny)}}}))
    (tiny / "train.txt").write_text("02691156-a0.npy\n")
    with pytest.raises(ConfigError, match="needs a part-segmentation dataset .* got ShapeNet"):
        task.build_dataset("val")


@pytest.mark.parametrize("npoints", [0, -5, 8])
def test_task_checks_the_clouds_are_big_enough_for_the_model(tiny: Path, npoints: int):
    dataset = {"NAME": "ShapeNetPart", "root": str(tiny), "split": "test", "npoints": npoints}
    task = PointPartSegTask(Config({"model": {"NAME": "pointmap_partseg", **TINY_MODEL}, "dataset": {"val": dataset}}))
    with pytest.raises(UserError, match=rf"dataset.val.npoints={npoints}"):
        task.build_dataset("val")
        task.build_model()  # 9 groups of 8 points: at least 9 points per cloud


def test_isotropic_scale_and_shift():
    pts = torch.randn(4, 50, 3)
    out = isotropic_scale_and_shift(pts, generator=torch.Generator().manual_seed(0))
    centred_in, centred_out = pts - pts.mean(1, keepdim=True), out - out.mean(1, keepdim=True)
    scale = (centred_out / centred_in).reshape(4, -1)
    assert torch.allclose(scale, scale[:, :1], atol=1e-4)  # one scale per cloud, all axes
    assert ((scale[:, 0] >= 0.8) & (scale[:, 0] <= 1.25)).all() and scale[:, 0].std() > 0
    shift = out.mean(1) - scale[:, :1] * pts.mean(1)
    assert (shift.abs() <= 0.1 + 1e-5).all()


# ---------------------------------------------------------------- end to end through tools/train.py
@pytest.mark.slow
def test_two_epochs_finetune_from_pointmap_then_test(tmp_path: Path, capsys):
    """partseg_shapenetpart.yaml, shrunk: --finetune a PointMAP pretraining checkpoint, train two
    epochs on tiny files in the real layout, report mIoU each epoch, then --test best.pth."""
    root = write_dataset(tmp_path / "data", {"train": [("Airplane", "a1"), ("Bag", "b1"), ("Mug", "m1"), ("Mug", "m2")],
                                             "val": [], "test": [("Airplane", "a9"), ("Mug", "m9")]}, points=80)
    torch.manual_seed(0)
    pretrained = pointmap_pretrain(**TINY_MODEL, decoder_depth=1)
    atomic_save({"model": pretrained.state_dict()}, tmp_path / "pretrain.pth")
    sets = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
        f"dataset.train.root={root}", f"dataset.val.root={root}", "dataset.train.npoints=64",
        "dataset.val.npoints=64", "train.num_workers=0", "train.total_batch_size=2", "scheduler.epochs=2",
        "scheduler.warmup_epochs=0", "runtime.device=cpu"]
    run = ["--config", str(REPO / "configs" / "pointcloud" / "partseg_shapenetpart.yaml"),
           "--exp-root", str(tmp_path / "exp")]
    assert train_main(run + ["--finetune", str(tmp_path / "pretrain.pth"), "--set", *sets]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["metric"] == "instance_miou" and 0 <= result["best_metric"] <= 100
    folder = tmp_path / "exp" / "partseg_shapenetpart" / "default"
    epochs = [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["instance_miou"] <= 100 and 0 <= r["class_miou"] <= 100 for r in epochs)
    log_text = (folder / "log.txt").read_text()
    assert "loaded pretrained weights" in log_text and "mIoU per category: Airplane" in log_text
    missing = next(line for line in log_text.splitlines() if "missing keys" in line)
    assert "convs1.weight" in missing and "tokenizer." not in missing and "encoder." not in missing

    assert train_main(run + ["--test", "--set", *sets]) == 0
    test = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(test) >= {"instance_miou", "class_miou", "accuracy", "loss"}


def test_visualize_predicted_next_to_true_parts(tiny: Path, tmp_path: Path):
    from PIL import Image

    from pointcloud.visualize import partseg_panels
    from tools import visualize

    torch.manual_seed(0)
    model = PointMAPPartSeg(**TINY_MODEL)
    atomic_save({"model": model.state_dict()}, tmp_path / "partseg.pth")
    dataset = ShapeNetPart(root=tiny, split="test", npoints=32)
    pts, category, target = (torch.stack([dataset[i][j] for i in range(2)]) for j in range(3))
    panels = partseg_panels(model, pts, category, target, dataset.category_parts)
    for (cloud, pred, truth, miou), parts, labels in zip(panels, ([4, 5], [36, 37]), target):
        assert cloud.shape == (32, 3) and 0 <= miou <= 100
        assert set(pred.tolist()) <= {0, 1}  # numbered within the category (Bag 4, 5; Mug 36, 37)
        assert np.array_equal(truth, labels.numpy() - parts[0])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {NAME: pointmap_partseg, " + ", ".join(f"{k}: {v}" for k, v in TINY_MODEL.items()) + "}\n"
                   "task: {NAME: point_partseg}\n"
                   f"dataset: {{val: {{NAME: ShapeNetPart, root: {tiny}, split: test, npoints: 32}}}}\n")
    out = tmp_path / "parts.png"
    assert visualize.main(["--config", str(cfg), "--ckpt", str(tmp_path / "partseg.pth"), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 100
