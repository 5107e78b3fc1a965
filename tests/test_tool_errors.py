"""The tools' arguments, ablate.py's report, signals and GPUs (issue 22: 3, 9, 14; issue 21: 3).

Bad arguments end with argparse's usage and error line (exit 2), bad grids and configs with one
'error:' line (exit 2); ablate.py writes under --out unless told otherwise, ends its jobs' process
groups on SIGTERM / Ctrl-C, and spreads jobs over every GPU it sees (faked here on the CPU).
"""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from tools import ablate, benchmark, demo, diagnose, visualize

ROOT = Path(__file__).resolve().parents[1]
MODALITY = {"pretrain": "configs/demo/pointmap_pretrain.yaml", "evaluate": {"finetune": "configs/demo/pointmap_finetune.yaml"}}


def grid_file(tmp_path: Path, **changes) -> Path:
    grid = {"seeds": [0], "modalities": {"points": dict(MODALITY)}, "cells": [{"objective": "map"}]}
    grid.update(changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


# (case, tool main, argv (with {grid} / {tmp}), what stderr says)
ARGUMENT_ERRORS = [
    ("ablate --seeds zero", ablate.main, ["--grid", "{grid}", "--seeds", "zero"],
     "argument --seeds: expected comma-separated integer seeds (e.g. 0,1,2), got 'zero'"),
    ("ablate --jobs 0", ablate.main, ["--grid", "{grid}", "--jobs", "0"],
     "argument --jobs: expected a whole number of at least 1, got 0"),
    ("ablate --jobs-per-gpu -1", ablate.main, ["--grid", "{grid}", "--jobs-per-gpu", "-1"],
     "argument --jobs-per-gpu: expected a whole number of at least 1, got -1"),
    ("visualize --num 0", visualize.main, ["--ckpt", "x.pth", "--out", "x.png", "--num", "0"],
     "argument --num: expected a whole number of at least 1, got 0"),
    ("visualize --num -2", visualize.main, ["--ckpt", "x.pth", "--out", "x.png", "--num", "-2"],
     "argument --num: expected a whole number of at least 1, got -2"),
    ("demo --limit-per-class 0", demo.main, ["--limit-per-class", "0"],
     "argument --limit-per-class: expected a whole number of at least 1, got 0"),
    ("benchmark --batch 0", benchmark.main, ["--model", "map_pretrain", "--batch", "0"],
     "argument --batch: expected a whole number of at least 1, got 0"),
]


@pytest.mark.parametrize("case, main, argv, message", ARGUMENT_ERRORS, ids=[c[0] for c in ARGUMENT_ERRORS])
def test_bad_argument_is_argparses_error(tmp_path: Path, capsys, case, main, argv, message) -> None:
    argv = [a.format(grid=grid_file(tmp_path), tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err, err


# (case, grid changes, what the one error line says)
GRID_ERRORS = [
    ("seeds: 0", {"seeds": 0}, r"grid\.yaml: seeds: expected a list of integer seeds, e\.g\. \[0, 1, 2\], got 0"),
    ("a seed that is text", {"seeds": [0, "one"]}, r"grid\.yaml: seeds\[1\]: expected an integer seed, got 'one'"),
    ("modalities as a list", {"modalities": [MODALITY]},
     r"grid\.yaml: modalities: expected a mapping of modality name -> its configs, got \[\{"),
    ("evaluate as a list", {"modalities": {"points": {**MODALITY, "evaluate": ["configs/demo/pointmap_finetune.yaml"]}}},
     r"modalities\.points\.evaluate: expected a mapping of evaluation name -> config, got \['configs"),
    ("sets with a bad template", {"modalities": {"points": {**MODALITY, "sets": {"pretrain": ["model.depth={0}{1}"]}}}},
     r"modalities\.points\.sets\.pretrain\[0\]: 'model\.depth=\{0\}\{1\}' is not a template with one \{\}"),
    ("sets for an unknown kind", {"modalities": {"points": {**MODALITY, "sets": {"finetune": ["a=1"]}}}},
     r"modalities\.points\.sets\.finetune: unknown job kind \(expected pretrain or evaluate\)"),
    ("cells as a mapping", {"cells": {"objective": "map"}}, r"grid\.yaml: cells: expected a list of cells"),
]


@pytest.mark.parametrize("case, changes, message", GRID_ERRORS, ids=[c[0] for c in GRID_ERRORS])
def test_bad_grid_is_one_error_line(tmp_path: Path, capsys, case, changes, message) -> None:
    assert ablate.main(["--grid", str(grid_file(tmp_path, **changes)), "--dry-run", "--gpus", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_dry_run_names_the_job_whose_sets_are_bad(tmp_path: Path, capsys) -> None:
    bad = {"points": {**MODALITY, "sets": {"pretrain": ["model.no_such_key=1"]}}}
    assert ablate.main(["--grid", str(grid_file(tmp_path, modalities=bad)), "--dry-run", "--gpus", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: job points/objective=map/seed0/pretrain (configs/demo/pointmap_pretrain.yaml "
                          "--set model.no_such_key=1 model.objective=map): ") and "no_such_key" in err, err


def test_diagnose_refuses_a_finetune_config(capsys) -> None:
    assert diagnose.main(["--config", "configs/demo/image_finetune.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: configs/demo/image_finetune.yaml: model.NAME 'map_classifier' builds a "
                           "MAPClassifier; diagnose needs a pretraining config (a MAP pretraining model)")


@pytest.mark.slow  # a process of its own, which imports torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernel benchmark runs on a GPU")
def test_kernel_benchmark_without_a_gpu_is_one_error_line(capfd) -> None:
    assert benchmark.main(["--kernels"]) == 2  # benchmark.py hands --kernels to benchmark_kernels.py
    err = capfd.readouterr().err
    assert err.startswith("error: the kernel benchmark times the Triton kernels on a CUDA GPU") and \
        len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ 3. the report goes under --out

def test_report_is_written_under_out_unless_docs_are_named(tmp_path: Path, capsys) -> None:
    docs = {p: p.read_bytes() for p in (ROOT / "docs").rglob("ablation*") if p.is_file()}
    out = tmp_path / "out"
    out.mkdir()
    record = {"job": "points/objective=map/seed0/finetune", "modality": "points", "cell": {"objective": "map"},
              "seed": 0, "kind": "finetune", "metric": "top1", "value": 50.0, "seconds": 1.0, "finished": 10.0,
              "device": "cpu (cpu)", "checkpoint": "x", "ablate": "python tools/ablate.py ..."}
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    grid = str(grid_file(tmp_path))
    assert ablate.main(["--grid", grid, "--out", str(out), "--report-only", "--gpus", ""]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'ablation.md'} and {out / 'ablation.png'}"
    assert "| map |  | 50.0 ± 0.0 (1) |" in (out / "ablation.md").read_text()
    assert {p: p.read_bytes() for p in (ROOT / "docs").rglob("ablation*") if p.is_file()} == docs  # untouched
    doc, png = tmp_path / "named" / "table.md", tmp_path / "named" / "plot.png"
    assert ablate.main(["--grid", grid, "--out", str(out), "--report-only", "--gpus", "", "--doc", str(doc),
                        "--plot", str(png)]) == 0
    assert doc.is_file() and png.stat().st_size > 1000


# ------------------------------------------------------------------ a fake train.py for the runner

FAKE_JOB = textwrap.dedent('''
    """Stands in for tools/train.py: records where it runs, starts a grandchild, prints metrics."""
    import json, os, subprocess, sys, time
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    out = os.environ["FAKE_JOB_OUT"]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    name = args["--exp-root"].replace(os.sep, "_")
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump({"pid": os.getpid(), "child": child.pid, "gpu": os.environ["CUDA_VISIBLE_DEVICES"],
                   "start": time.time()}, f)
    time.sleep(float(os.environ["FAKE_JOB_SECONDS"]))
    child.kill()
    print(json.dumps({"metric": "gpu", "best_metric": 0, "last_metrics": {"gpu": 0}}))
''')


def fake_jobs(tmp_path: Path, count: int) -> list:
    """``count`` independent jobs (no pretraining to wait for), each in its own folder."""
    cell = ablate.Cell((("objective", "scratch"),))
    return [ablate.Job(f"j{i}", "points", cell, 0, "finetune", MODALITY["evaluate"]["finetune"], [],
                       tmp_path / "runs" / f"j{i}") for i in range(count)]


@pytest.fixture
def fake_train(tmp_path: Path, monkeypatch) -> Path:
    script, out = tmp_path / "fake_train.py", tmp_path / "started"
    script.write_text(FAKE_JOB)
    out.mkdir()
    monkeypatch.setattr(ablate, "TRAIN", script)
    monkeypatch.setenv("FAKE_JOB_OUT", str(out))
    return out


def test_jobs_spread_over_every_gpu(tmp_path: Path, fake_train: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake GPU {i}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("FAKE_JOB_SECONDS", "1.5")
    slots = ablate.make_slots(ablate.visible_gpus(), 2, 1)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1", "2", "2", "3", "3"]
    runner = ablate.Runner(fake_jobs(tmp_path, 6), slots, tmp_path / "results.jsonl")
    assert runner.run() == 0
    started = sorted((json.loads(p.read_text()) for p in fake_train.iterdir()), key=lambda r: r["start"])
    records = ablate.read_results(tmp_path / "results.jsonl")
    # six jobs at once on four GPUs of two slots each: every GPU gets one before any gets a second
    assert [records[f"j{i}"]["device"] for i in range(6)] == [f"Fake GPU {g} (cuda:{g})" for g in (0, 1, 2, 3, 0, 1)]
    assert sorted(r["gpu"] for r in started) == ["0", "0", "1", "1", "2", "3"]
    # the GPUs this process sees are named as CUDA_VISIBLE_DEVICES names them, for the children
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,6,7")
    assert ablate.visible_gpus() == ["2", "5", "6", "7"]
    assert ablate.make_slots(ablate.visible_gpus(), 1, 1)[1].env["CUDA_VISIBLE_DEVICES"] == "5"


# ------------------------------------------------------------------ 9. SIGTERM and Ctrl-C

RUN_ABLATE = """
import sys
from pathlib import Path
from tools import ablate
ablate.TRAIN = Path(sys.argv[1])
sys.exit(ablate.main(sys.argv[2:]))
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for init to reap counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_every_job_and_its_children(tmp_path: Path, fake_train: Path, signum) -> None:
    grid = grid_file(tmp_path, cells=[{"objective": "scratch"}], seeds=[0, 1])  # two independent jobs
    env = dict(os.environ, FAKE_JOB_OUT=str(fake_train), FAKE_JOB_SECONDS="120")
    proc = subprocess.Popen([sys.executable, "-c", RUN_ABLATE, str(tmp_path / "fake_train.py"), "--grid", str(grid),
                             "--out", str(tmp_path / "out"), "--gpus", "", "--jobs", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(fake_train.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the records are written: read them whole
    jobs = [json.loads(p.read_text()) for p in fake_train.iterdir()]
    assert len(jobs) == 2 and all(alive(j["pid"]) and alive(j["child"]) for j in jobs)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert err.strip() == (f"interrupted by {signal.Signals(signum).name}: stopped 2 running job(s); "
                           f"the same command continues the grid"), err
    time.sleep(0.5)
    assert not any(alive(j["pid"]) or alive(j["child"]) for j in jobs)  # the jobs' process groups ended
