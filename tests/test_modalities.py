"""Modalities as plug-ins: a third modality, registered here, reaches benchmark and visualize with no
tool edit; packages are discovered by their modality.py; the engine's dataset and fold hooks."""
import json
import textwrap
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import tests.engine_toy as toy
from map_core import modalities
from map_core.engine import schema
from map_core.engine.schema import load_experiment
from map_core.engine.checkpoint import atomic_save
from map_core.errors import ConfigError
from map_core.modalities import Modality, load_modalities, modality_modules, modality_of, register_modality
from map_core.registry import DATASETS, MODELS
from tests.test_engine import TOY_CONFIG
from tools import benchmark, visualize
from tools.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]

SEEN: List[Tuple[int, ...]] = []  # input shapes the toy depth model was called with


class ToyDepthMAE(nn.Module):
    """x: (B, 1, H, W) depth maps -> (loss, prediction (B, 1, H, W), mask (B, H, W)): masked pixels
    are zeroed and rebuilt by two convolutions."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, mask=None):
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected depth maps (B, 1, H, W), got {tuple(x.shape)}")
        SEEN.append(tuple(x.shape))
        mask = torch.rand(x.shape[0], *x.shape[2:], device=x.device) < 0.5 if mask is None else mask
        pred = self.net(x * ~mask[:, None])
        return ((pred - x) ** 2)[:, 0][mask].mean(), pred, mask


class ToyDepthClassifier(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.head = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


class ToyDepthMaps(Dataset):
    """``size`` depth maps (1, side, side): ramps of growing slope, label 0."""

    def __init__(self, size: int = 5, side: int = 8):
        ramp = torch.linspace(0, 1, side).expand(side, side)
        self.maps = [(ramp * (i + 1) / size)[None] for i in range(size)]

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, i: int):
        return self.maps[i], 0


def example_depth(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, device=device)


def depth_visualizer(model: nn.Module, dataset):
    """Rows of [input | prediction] as one grey PNG, for the toy MAE only."""
    if not isinstance(model, ToyDepthMAE):
        return None

    @torch.no_grad()
    def draw(picks, out: Path) -> None:
        maps = torch.stack([dataset[i][0] for i in picks])
        _, pred, _ = model.eval()(maps)
        rows = torch.cat([maps, pred.clamp(0, 1)], dim=-1)[:, 0].reshape(-1, 2 * maps.shape[-1])
        Image.fromarray((rows * 255).byte().numpy()).save(out)

    return draw


for registry, name, fn in ((MODELS, "toy_depth_mae", ToyDepthMAE), (MODELS, "toy_depth_classifier", ToyDepthClassifier),
                           (DATASETS, "toy_depth_maps", ToyDepthMaps)):
    if name not in registry:
        registry.register(name, fn)

DEPTH = Modality(name="depth", package=__name__, example_input=example_depth, default_size=8,
                 visualizer=depth_visualizer, drawable="a depth MAE (toy_depth_mae)")


@pytest.fixture
def depth(monkeypatch):
    """The repository's modalities plus the toy depth one, for this test only."""
    monkeypatch.setattr(modalities, "MODALITIES", dict(load_modalities()))
    SEEN.clear()
    return register_modality(DEPTH)


def json_rows(capsys) -> List[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# ------------------------------------------------------------------ lookup and discovery

def test_the_repository_modalities_are_found_by_their_modality_py():
    assert modality_modules() == ["image.modality", "pointcloud.modality"]
    found = load_modalities()
    assert {name: m.package for name, m in found.items()}.items() >= {"image": "image", "points": "pointcloud"}.items()
    assert modality_of("map_base_patch16_224").name == "image" and modality_of("map_classifier").name == "image"
    assert modality_of("pointmap_partseg").name == "points"
    assert modality_of(MODELS.get("pointmap_pretrain")(trans_dim=48, encoder_dims=48, depth=3, num_group=16,
                                                       group_size=8, decoder_depth=1)).name == "points"


def test_model_lookup_by_package_attribute_and_errors(depth):
    assert modality_of("toy_depth_mae") is depth and modality_of(ToyDepthMAE()) is depth
    assert modality_of(benchmark.MAEViTBase).name == "image"  # an explicit 'modality' attribute
    with pytest.raises(ConfigError, match=r"defined in module 'tests.engine_toy'.*registered: .*depth \("):
        modality_of("toy_mlp")
    with pytest.raises(ConfigError, match="unknown model 'toy_depht_mae'; did you mean 'toy_depth_mae'"):
        modality_of("toy_depht_mae")
    with pytest.raises(ConfigError, match="unknown modality 'dept'; did you mean 'depth'"):
        modalities.get_modality("dept")
    with pytest.raises(KeyError, match="modality 'depth' is registered twice"):
        register_modality(Modality("depth", "elsewhere", example_depth, 8))


def test_a_new_package_with_a_modality_py_is_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "voxels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "modality.py").write_text(textwrap.dedent("""
        import torch
        from map_core.modalities import Modality, register_modality
        register_modality(Modality("voxels", __package__, lambda b, s, d: torch.zeros(b, 1, s, s, s), 16))
        """))
    (tmp_path / "notes").mkdir()  # a package without modality.py is never imported
    (tmp_path / "notes" / "__init__.py").write_text("raise RuntimeError('imported')")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(modalities, "MODALITIES", {})
    assert modality_modules(tmp_path) == ["voxels.modality"]
    assert list(load_modalities(tmp_path)) == ["voxels"]
    assert benchmark.make_input("voxels:4", 2, torch.device("cpu")).shape == (2, 1, 4, 4, 4)
    monkeypatch.setenv(modalities.MODALITY_ENV, "no_such_modality_pkg")
    with pytest.raises(ConfigError, match="MAP_MODALITIES names 'no_such_modality_pkg'"):
        load_modalities(tmp_path)


# ------------------------------------------------------------------ the tools, unchanged

def test_benchmark_makes_the_new_modalitys_input(depth, capsys):
    base = ["--model", "toy_depth_mae", "--batch", "2", "--steps", "1", "--warmup", "0"]
    assert benchmark.main(base) == 0  # no --input: the model's modality at its default size
    assert json_rows(capsys)[0]["input"] == "depth:8" and set(SEEN) == {(2, 1, 8, 8)}
    SEEN.clear()
    assert benchmark.main(base + ["--input", "depth:12"]) == 0
    assert json_rows(capsys)[0]["input"] == "depth:12" and set(SEEN) == {(2, 1, 12, 12)}
    assert benchmark.main(base + ["--input", "dept:12"]) == 2
    assert "unknown modality 'dept'; did you mean 'depth'" in capsys.readouterr().err


def write_depth_config(tmp_path: Path, model: str) -> Path:
    cfg = tmp_path / f"{model}.yaml"
    cfg.write_text(f"model: {{NAME: {model}}}\ntask: {{NAME: pretrain}}\n"
                   "dataset: {val: {NAME: toy_depth_maps, size: 5, side: 8}}\n")
    return cfg


def test_visualize_dispatches_to_the_new_modality(depth, tmp_path, capsys):
    torch.manual_seed(0)
    trained = ToyDepthMAE()
    atomic_save({"model": trained.state_dict()}, tmp_path / "ckpt.pth")
    out = tmp_path / "pics" / "depth.png"
    args = ["--ckpt", str(tmp_path / "ckpt.pth"), "--out", str(out), "--num", "3"]
    assert visualize.main(["--config", str(write_depth_config(tmp_path, "toy_depth_mae")), *args]) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape == (3 * 8, 2 * 8)  # 3 rows of [input | prediction], 8 x 8 each
    maps = ToyDepthMaps(5, 8)
    for row, index in enumerate((0, 2, 4)):  # spread evenly over the 5 maps
        expected = (maps[index][0][0] * 255).byte().numpy()
        assert np.array_equal(picture[8 * row:8 * row + 8, :8], expected)
    # the prediction half comes from the checkpoint's weights, not a fresh model's
    torch.manual_seed(0)
    with torch.no_grad():
        _, pred, _ = trained.eval()(torch.stack([maps[i][0] for i in (0, 2, 4)]))
    assert np.array_equal(picture[:8, 8:], (pred.clamp(0, 1)[0, 0] * 255).byte().numpy())
    # a model of the modality that its visualiser cannot draw: the modality says what it can
    classifier = write_depth_config(tmp_path, "toy_depth_classifier")
    assert visualize.main(["--config", str(classifier), *args]) == 2
    assert "builds a ToyDepthClassifier; visualize needs a depth MAE (toy_depth_mae)" in capsys.readouterr().err


# ------------------------------------------------------------------ the engine's hooks

class SummarisedBlobs(toy.ToyBlobs):
    """Toy blobs that add their own fields to each epoch record."""

    def epoch_summary(self, epoch: int):
        return {"blobs_epoch": epoch, "blobs_size": len(self)}


if "toy_blobs_summarised" not in DATASETS:
    DATASETS.register("toy_blobs_summarised", SummarisedBlobs)


def test_train_dataset_epoch_summary_reaches_the_epoch_records(tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(TOY_CONFIG.replace("train: {NAME: toy_blobs,", "train: {NAME: toy_blobs_summarised,"))
    assert train_main(["--config", str(cfg), "--exp-root", str(tmp_path / "exp")]) == 0
    lines = (tmp_path / "exp" / "toy" / "default" / "metrics.jsonl").read_text().splitlines()
    epochs = [r for r in map(json.loads, lines) if r["type"] == "epoch"]
    assert [(r["blobs_epoch"], r["blobs_size"]) for r in epochs] == [(1, 64), (2, 64)]


def test_fewshot_section_comes_from_the_point_cloud_modality(tmp_path, monkeypatch):
    import pointcloud.fewshot

    path = tmp_path / "fs.yaml"
    path.write_text(TOY_CONFIG + "fewshot: {way: 3}\n")
    cfg = load_experiment(path, ["fewshot.shot=4"])
    assert cfg.optional["fewshot"] == pointcloud.fewshot.FewshotConfig(way=3, shot=4, folds=10)  # typed, defaults filled
    with pytest.raises(ConfigError, match="'fewshot.folds' .* expects int, got 'many'"):
        load_experiment(path, ["fewshot.folds=many"])
    protocol = cfg.fold_protocol()
    assert protocol.fold_config is pointcloud.fewshot.fewshot_fold_config and protocol.summary_file == "fewshot_summary.json"
    fold = protocol.fold_config(cfg, 1)
    assert fold.dataset.train.fold == 1 and fold.task.num_classes == 3 and "fold" not in cfg.dataset.train
    # the class count written once: fewshot.way as task.num_classes, the model and datasets follow it
    assert fold.model.num_classes == 3 and fold.dataset.train.num_classes == 3 and cfg.model.num_classes == 4
    assert fold.source("model.num_classes") == f"{path}, as fewshot.way, as task.num_classes"
    monkeypatch.setattr(schema, "_FOLD_PROTOCOLS", {})  # without the modality, the section is unknown
    with pytest.raises(ConfigError, match="unknown key 'fewshot'"):
        load_experiment(path)
