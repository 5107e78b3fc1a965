"""Two processes on the CPU (gloo, torchrun), as on two GPUs (issue 21, the part a CPU can check).

- a 2-process run with gradient accumulation follows a 1-process run of the same global batch
  step by step (losses, weights) within fp32 noise, with identical weights on both ranks;
- gradients are all-reduced once per optimizer update, not once per micro-batch (DDP ``no_sync``);
- a rank that dies ends the job with torchrun's report naming it, and ``--resume`` then continues
  to exactly the weights of a run that was never interrupted.

Each torchrun takes several seconds to start its processes: the tests are marked slow.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from map_core.engine.checkpoint import load_checkpoint
from tests.test_engine import config, free_port  # noqa: F401  (config: the toy config, a fixture)
from tools.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
SMALL = ["dataset.train.size=32", "dataset.val.size=16", "runtime.device=cpu"]  # batch 16: 2 updates an epoch
UPDATES = 4
DETERMINISTIC = ["model.dropout=0", "dataset.train.noise=0", "dataset.val.noise=0"]  # no per-rank randomness

pytestmark = pytest.mark.slow


def torchrun(config: Path, root: Path, name: str, *sets: str, resume: bool = False,
             timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 tools/train.py`` with the toy parts registered (tests/engine_toy.py)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "tests" / "engine_toy.py"), "--config", str(config), "--exp-root", str(root), "--exp-name", name,
           *(["--resume", "--allow-changed-config"] if resume else []), "--set", *SMALL, *sets]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def train_rows(exp: Path) -> List[dict]:
    return [r for r in map(json.loads, (exp / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_two_ranks_follow_one_process_with_one_reduction_per_update(config: Path, tmp_path: Path) -> None:
    root, dump = tmp_path / "exp", tmp_path / "dump"
    dump.mkdir()
    assert train_main(["--config", str(config), "--exp-root", str(root), "--exp-name", "one",
                       "--set", *SMALL, *DETERMINISTIC]) == 0
    result = torchrun(config, root, "two", *DETERMINISTIC, "train.accum_steps=2", f"task.dump_params={dump}")
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = train_rows(root / "toy" / "one"), train_rows(root / "toy" / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, UPDATES + 1))
    for a, b in zip(one, two):  # the same global batches, summed in another order
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6) and b["lr"] == a["lr"]
    w1, w2 = (load_checkpoint(root / "toy" / name / "last.pth") for name in ("one", "two"))
    for key, value in w1["model"].items():
        torch.testing.assert_close(w2["model"][key], value, rtol=1e-5, atol=1e-6)
    assert len(w2["rng"]) == 2 and w2["global_step"] == UPDATES
    assert sorted(p.name for p in root.iterdir()) == ["toy"] and sorted(p.name for p in (root / "toy").iterdir()) == [
        "one", "two"]  # rank 1 made no folder of its own
    # both ranks hold the same weights; each reduced its gradients once per update (2 micro-batches each)
    assert (dump / "rank0.txt").read_text() == (dump / "rank1.txt").read_text()
    for rank in (0, 1):
        counts = json.loads((dump / f"rank{rank}.json").read_text())
        assert counts["train_steps"] == 2 * UPDATES
        assert counts["reductions"] == UPDATES * counts["buckets"] and counts["buckets"] >= 1


def test_a_dead_rank_ends_the_job_and_resume_restores_exactly(config: Path, tmp_path: Path) -> None:
    root = tmp_path / "exp"
    full = torchrun(config, root, "full")  # dropout and data noise on: RNG states matter
    assert full.returncode == 0, full.stderr[-3000:]
    # rank 1 is killed at its 3rd step (the first of epoch 2, after the epoch-1 checkpoint)
    start = time.time()
    killed = torchrun(config, root, "split", "task.die_at_step=3", "task.die_rank=1")
    assert killed.returncode != 0 and time.time() - start < 200
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", killed.stderr) and "SIGKILL" in killed.stderr, \
        killed.stderr[-3000:]
    split = root / "toy" / "split"
    assert load_checkpoint(split / "last.pth")["epoch"] == 1
    # the lock left by the killed run is taken over; the fault-injection keys are dropped on purpose
    resumed = torchrun(config, root, "split", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_checkpoint(root / "toy" / "full" / "last.pth"), load_checkpoint(split / "last.pth")
    assert a["global_step"] == b["global_step"] == UPDATES
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["loss"] for r in train_rows(root / "toy" / "full")] == [r["loss"] for r in train_rows(split)]
