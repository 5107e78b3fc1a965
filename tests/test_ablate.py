"""tools/ablate.py on a tiny grid of real tools/train.py jobs (CPU, a few seconds each)."""
import json
import shlex
from pathlib import Path

import pytest
import yaml

from tools import ablate, demo

TINY = ["scheduler.epochs=1", "scheduler.warmup_epochs=0", "train.max_steps_per_epoch=1", "train.total_batch_size=8"]


def _grid(tmp_path: Path) -> Path:
    data = demo.load_demo_builder().build_demo_data(tmp_path / "data", limit_per_class=2)
    shapenet = [f"dataset.{s}.{k}={data[v]}" for s in ("train", "val")
                for k, v in (("data_path", "shapenet_list"), ("pc_path", "shapenet_pc"))]
    scan = [f"dataset.{s}.root={data['scanobjectnn']}" for s in ("train", "val")]
    grid = {
        "seeds": [0],
        "axes": {"variant": {"pretrain": ["model.variant={}"], "evaluate": ["model.variant={}"]}},
        "modalities": {"points": {
            "pretrain": "configs/demo/pointmap_pretrain.yaml",
            "evaluate": {"finetune": "configs/demo/pointmap_finetune.yaml"},
            "sets": {"pretrain": shapenet + TINY, "evaluate": scan + TINY},
        }},
        "cells": [{"objective": ["map", "scratch"], "variant": "hybrid"},
                  {"objective": "mae", "variant": "bogus"}],  # a pretraining that fails
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_grid_expansion_and_overrides(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "seeds": [3],
        "axes": {"variant": {"pretrain": ["model.variant={}"], "evaluate": ["model.variant={}"]},
                 "mask_ratio": {"pretrain": ["model.mask_ratio={}"]}},
        "modalities": {"image": {
            "pretrain": "configs/demo/image_pretrain.yaml",
            "evaluate": {"finetune": "configs/demo/image_finetune.yaml"},
            "axes": {"mask_ratio": {"pretrain": ["model.mask_ratio={}", "model.mask_ratio_std=0"]}}}},
        "cells": [{"objective": ["map", "scratch"], "variant": ["hybrid", "mamba"]},
                  {"objective": "map", "variant": "hybrid", "mask_ratio": [0.25, 0.75]},
                  {"objective": "map", "variant": "hybrid"}],  # a duplicate: expanded once
    }, sort_keys=False))
    grid = ablate.load_grid(path)
    assert [c.name for c in grid.cells] == [
        "objective=map,variant=hybrid", "objective=map,variant=mamba", "objective=scratch,variant=hybrid",
        "objective=scratch,variant=mamba", "objective=map,variant=hybrid,mask_ratio=0.25",
        "objective=map,variant=hybrid,mask_ratio=0.75"]
    jobs = {j.id: j for j in ablate.expand(grid, tmp_path)}
    assert len(jobs) == 4 * 2 + 2 * 1  # 4 pretrained cells x (pretrain + finetune), 2 scratch finetunes
    pre = jobs["image/objective=map,variant=hybrid,mask_ratio=0.25/seed3/pretrain"]
    assert pre.sets == ["model.objective=map", "model.variant=hybrid", "model.mask_ratio=0.25",
                        "model.mask_ratio_std=0"]
    ft = jobs["image/objective=map,variant=hybrid,mask_ratio=0.25/seed3/finetune"]
    assert ft.after == pre.id and ft.sets == ["model.variant=hybrid"]
    assert "--finetune" in ft.argv(Path("x.pth")) and ft.argv(None)[-2:] == ["--set", "model.variant=hybrid"]
    assert jobs["image/objective=scratch,variant=mamba/seed3/finetune"].after is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"seeds": [0], "modalities": grid.modalities,
                                   "cells": [{"objective": "map", "depth": [1, 2]}]}, sort_keys=False))
    with pytest.raises(ablate.GridError, match=r"cells\[0\].depth has no entry in 'axes'"):
        ablate.load_grid(bad)


@pytest.mark.slow
def test_tiny_grid_runs_resumes_and_reports(tmp_path, capsys):
    grid, out = _grid(tmp_path), tmp_path / "out"
    doc, png = tmp_path / "ablation.md", tmp_path / "ablation.png"
    doc.write_text(f"# Findings kept\n\n{ablate.BEGIN}\nstale table\n{ablate.END}\n\nclosing words\n")
    args = ["--grid", str(grid), "--out", str(out), "--gpus", "", "--jobs", "2", "--doc", str(doc),
            "--plot", str(png)]
    assert ablate.main(args) == 1  # the bogus variant fails; the rest runs
    printed = capsys.readouterr().out
    assert "FAIL points/objective=mae,variant=bogus/seed0/pretrain" in printed
    assert "skip  points/objective=mae,variant=bogus/seed0/finetune" in printed
    lines = (out / "results.jsonl").read_text().splitlines()
    records = {json.loads(line)["job"]: json.loads(line) for line in lines}
    assert set(records) == {"points/objective=map,variant=hybrid/seed0/pretrain",
                            "points/objective=map,variant=hybrid/seed0/finetune",
                            "points/objective=scratch,variant=hybrid/seed0/finetune"}
    finetune = records["points/objective=map,variant=hybrid/seed0/finetune"]
    assert finetune["metric"] == "top1" and 0 <= finetune["value"] <= 100
    assert f"--finetune {records['points/objective=map,variant=hybrid/seed0/pretrain']['checkpoint']}" in \
        finetune["command"]
    assert "--finetune" not in records["points/objective=scratch,variant=hybrid/seed0/finetune"]["command"]
    text = doc.read_text()
    assert text.startswith("# Findings kept") and text.rstrip().endswith("closing words")
    assert "stale table" not in text and "| map | hybrid |" in text and " (1) |" in text
    assert png.stat().st_size > 1000

    # an interrupted grid: drop the last finished job; the rerun runs only that one (and the failure)
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert ablate.main(args) == 1
    assert "2 of 5 jobs already done; 3 to run" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == 3

    # results copied without the runs: a finished pretraining whose checkpoint is gone runs again
    # when a job still has to start from it (here the dropped finetune), and nothing else reruns
    pretrain = records["points/objective=map,variant=hybrid/seed0/pretrain"]
    kept = [line for line in lines if "map,variant=hybrid/seed0/finetune" not in line]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    Path(pretrain["checkpoint"]).unlink()
    assert ablate.main(args) == 1
    printed = capsys.readouterr().out
    assert "again points/objective=map,variant=hybrid/seed0/pretrain: its checkpoint is gone" in printed
    assert "1 of 5 jobs already done; 4 to run" in printed
    assert Path(pretrain["checkpoint"]).is_file()
    finished = [json.loads(line)["job"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert finished.count("points/objective=map,variant=hybrid/seed0/pretrain") == 2
    assert finished.count("points/objective=scratch,variant=hybrid/seed0/finetune") == 1

    assert ablate.main(args + ["--dry-run"]) == 0
    assert "5 jobs, " in capsys.readouterr().out

    # a report written later names the command that ran the jobs, and its own
    assert ablate.main(args + ["--report-only"]) == 0
    ran = "python tools/ablate.py " + shlex.join(args)
    assert f"Generated by `{ran}` (table: `{ran} --report-only`) on " in doc.read_text()


def test_summary_is_mean_and_sample_std_over_seeds():
    cell = {"objective": "map", "variant": "hybrid"}
    records = [{"modality": "points", "cell": cell, "kind": "finetune", "value": v} for v in (80.0, 84.0, 88.0)]
    mean, std, n = ablate.summarise(records)[("points", "objective=map,variant=hybrid", "finetune")]
    assert (mean, n) == (84.0, 3) and abs(std - 4.0) < 1e-12


def test_wall_time_counts_overlapping_jobs_once_and_skips_pauses():
    # Two overlapping jobs (0-10 s, 5-12 s), then a second sitting an hour later (3600-3603 s).
    records = [{"finished": 10.0, "seconds": 10.0}, {"finished": 12.0, "seconds": 7.0},
               {"finished": 3603.0, "seconds": 3.0}]
    assert ablate.busy_seconds(records) == pytest.approx(12.0 + 3.0)
    assert ablate.busy_seconds([]) == 0.0
