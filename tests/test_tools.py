"""The command-line tools: benchmark, visualize and diagnose on tiny inputs; every tool is a console script,
and a checkout that is not installed says how to install it."""
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from map_core.engine.checkpoint import atomic_save
from map_core.registry import MODELS
from tools import benchmark, diagnose, visualize

TINY_IMAGE = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, decoder_dim=32,
                  decoder_depth=1, decoder_heads=4)


def test_benchmark_prints_one_json_line_per_model(capsys):
    args = ["--model", "map_pretrain", "--batch", "2", "--input", "image:16", "--steps", "1", "--warmup", "0",
            "--scan", "torch", "--set"] + [f"{k}={v}" for k, v in TINY_IMAGE.items()]
    assert benchmark.main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    assert len(rows) == 1 and rows[0]["device"] == device and rows[0]["samples_per_s"] > 0
    assert rows[0]["model_kwargs"]["embed_dim"] == 32 and rows[0]["backends"]["scan"] == "torch"
    # FLOPs of one step, counted: forward and backward of every matmul, at least the patch embedding's
    embed = 2 * 2 * 16 * (4 * 4 * 3) * 32  # batch 2, 16 patches, 48 -> 32
    assert rows[0]["model_flop_per_step"] >= 2 * embed


def test_mae_baseline_masks_three_quarters_and_trains():
    torch.manual_seed(0)
    mae = benchmark.MAEViTBase(img_size=32, patch=8, dim=32, depth=1, heads=2, dec_dim=16, dec_depth=1, dec_heads=2)
    loss, pred, masked = mae(torch.randn(3, 3, 32, 32))
    assert pred.shape == (3, 16, 8 * 8 * 3) and masked.sum(1).tolist() == [12.0, 12.0, 12.0]
    loss.backward()
    assert torch.isfinite(loss) and mae.patch_embed.proj.weight.grad.abs().sum() > 0


def test_benchmark_classifier_logits_path(capsys):
    args = ["--model", "map_classifier", "--batch", "2", "--input", "image:16", "--steps", "1", "--warmup", "0",
            "--set", "img_size=16", "patch_size=4", "embed_dim=32", "depth=3", "num_heads=4",
            "num_cls_tokens=2", "num_classes=3", "--profile"]
    assert benchmark.main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == "map_classifier"
    host = row["profile"]["top_host_ops"]  # (op, calls, self host ms), costliest first
    assert host and all(a[2] >= b[2] for a, b in zip(host, host[1:]))
    assert any(name.startswith("aten::") and calls >= 1 for name, calls, _ in host)


def test_image_panels_keep_visible_patches():
    torch.manual_seed(0)
    from image.visualize import image_panels

    model = MODELS.get("map_pretrain")(**TINY_IMAGE)
    imgs = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::2] = True
    panels = image_panels(model, imgs, mean=(0, 0, 0), std=(1, 1, 1), mask=mask)
    masked_in, recon, truth = panels[0]
    assert masked_in.shape == recon.shape == truth.shape == (16, 16, 3)
    # visible patches (odd patch indices) are copied from the input into the reconstruction
    patch = lambda img, i: img[4 * (i // 4):4 * (i // 4) + 4, 4 * (i % 4):4 * (i % 4) + 4]
    for i in range(1, 16, 2):
        assert (patch(recon, i) == patch(truth, i)).all()


def test_visualize_cli_writes_png(tmp_path: Path):
    import image  # noqa: F401
    from PIL import Image

    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "data" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model: {NAME: map_pretrain, " + ", ".join(f"{k}: {v}" for k, v in TINY_IMAGE.items()) + "}\n"
        "task: {NAME: pretrain}\n"
        f"dataset: {{val: {{NAME: ImageNet, root: {tmp_path / 'data'}, split: val, input_size: 16, crop_pct: 1.0}}}}\n")
    model = MODELS.get("map_pretrain")(**TINY_IMAGE)
    atomic_save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    out = tmp_path / "recon.png"
    assert visualize.main(["--config", str(cfg), "--ckpt", str(tmp_path / "ckpt.pth"), "--out", str(out),
                           "--num", "2"]) == 0
    assert Image.open(out).size[0] > 100


def test_diagnose_loss_ablations_on_a_tiny_point_model():
    from pointcloud.models import pointmap_pretrain

    torch.manual_seed(0)
    model = pointmap_pretrain(trans_dim=32, depth=3, num_heads=4, group_size=8, num_group=16, encoder_dims=32,
                              decoder_depth=1, decoder_num_heads=4)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 128, 3, generator=g), torch.randn(4, 128, 3, generator=g)]
    out = diagnose.diagnose(model, batches)
    mask = model.objective.sample_mask(4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = float(model.eval()(batches[0], mask)[0])
    assert set(out) == {"loss", "loss_content_blind", "loss_no_encoder_pos", "loss_zero_prediction",
                        "pos_norm", "feature_norm"}
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert out["loss_content_blind"] != out["loss"] and out["loss_no_encoder_pos"] != out["loss"]
    assert diagnose.diagnose(model, batches[:1])["loss"] == pytest.approx(first)
    assert model(batches[0], mask)[0].item() == pytest.approx(first)  # the tokeniser is restored


def test_every_tool_is_a_console_script() -> None:
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert 'package_dir={"map_tools": "tools"}' in setup  # installed, tools/X.py is map_tools.X
    scripts = dict(re.findall(r'"(map-[\w-]+) = map_tools\.(\w+):main"', setup))
    tools = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "tools").glob("*.py"))
    assert sorted(scripts.values()) == tools and all(name == "map-" + module.replace("_", "-")
                                                     for name, module in scripts.items())
    for module in tools:
        assert callable(importlib.import_module(f"tools.{module}").main)


@pytest.mark.parametrize("tool", ["train", "visualize", "demo"])
def test_a_checkout_that_is_not_installed_says_so(tool: str, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "tools" / f"{tool}.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: no site-packages, so neither the installed package nor its dependencies are importable
    result = subprocess.run([sys.executable, "-S", str(script), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr == (
        "error: the map_core package is not installed; run `pip install -e .` in the repository root\n")


@pytest.mark.slow
def test_a_tool_runs_as_a_script_without_path_edits(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "tools" / "train.py"
    # the package importable (through PYTHONPATH, set by conftest, as an install would), from another folder
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: train.py [-h] [--config CONFIG]")
