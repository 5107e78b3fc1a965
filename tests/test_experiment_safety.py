"""Experiment folders and checkpoints lose nothing (issue 22: 1, 2, 12).

Names stay inside the experiment root, --overwrite removes only what the project wrote, a folder
has one owner at a time, unreadable checkpoints are named in one line by every tool that reads them,
and a full disk during a save keeps the previous checkpoint and says which epoch it holds.
"""
import errno
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import tests.engine_toy  # noqa: F401  (registers the toy task, model and dataset)
from map_core.engine import checkpoint
from map_core.engine.checkpoint import load_checkpoint
from map_core.engine.experiment import LOCK_FILE, ExperimentLockedError, experiment_lock, remove_run
from tests.test_engine import config  # noqa: F401  (the toy config, a fixture)
from tests.test_workflows import one_error_line
from tools import diagnose, visualize
from tools.train import main as train_main

TINY_IMAGE = ("model: {NAME: map_pretrain, img_size: 16, patch_size: 4, embed_dim: 32, depth: 3, num_heads: 4, "
              "decoder_dim: 32, decoder_depth: 1, decoder_heads: 4}\ntask: {NAME: pretrain}\n")


def train(config: Path, root: Path, *extra: str) -> int:
    return train_main(["--config", str(config), "--exp-root", str(root), *extra])


# ------------------------------------------------------------------ 1. names and --overwrite

@pytest.mark.parametrize("name", ["../../precious", "a/../../b", "/abs/precious", ".", ""])
def test_experiment_name_stays_inside_the_root(config: Path, tmp_path: Path, capsys, name: str) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "official_weights.pth").write_bytes(b"user data")
    assert train(config, tmp_path / "root" / "exp", "--exp-name", name, "--overwrite") == 2
    assert f"--exp-name '{name}': expected a folder name inside the experiment root" in one_error_line(capsys)
    assert (precious / "official_weights.pth").read_bytes() == b"user data"
    assert not (tmp_path / "root").exists()


def test_overwrite_removes_only_the_projects_files(config: Path, tmp_path: Path, capsys, caplog) -> None:
    root = tmp_path / "exp"
    assert train(config, root, "--set", "scheduler.epochs=1") == 0
    exp = root / "toy" / "default"

    def files() -> list:  # TensorBoard's event files as one name (theirs change per run)
        names = (p.relative_to(exp).as_posix() for p in exp.rglob("*") if p.is_file())
        return sorted("tb/events" if n.startswith("tb/events.out.tfevents.") else n for n in names)

    written = files()
    user = {"official_weights.pth": b"weights", "notes.txt": b"notes", "tb/mine.csv": b"a,b", "fold_x/keep.pth": b"k"}
    for name, data in user.items():
        (exp / name).parent.mkdir(exist_ok=True)
        (exp / name).write_bytes(data)
    (exp / ".last.pth.99999999.tmp").write_bytes(b"left by a killed save")
    assert train(config, root, "--set", "scheduler.epochs=1") == 2  # refused without --overwrite
    assert "--overwrite" in one_error_line(capsys)
    assert train(config, root, "--set", "scheduler.epochs=1", "--overwrite") == 0
    assert all((exp / name).read_bytes() == data for name, data in user.items())
    assert not (exp / ".last.pth.99999999.tmp").exists()
    kept = next(r.getMessage() for r in caplog.records if "did not write" in r.getMessage())
    assert "kept 4 file(s)" in kept and "official_weights.pth" in kept
    # what the second run wrote is what the first wrote, plus the user's files
    assert files() == sorted(written + list(user))
    assert sorted(p.relative_to(exp).as_posix() for p in remove_run(exp)) == sorted(user)


# ------------------------------------------------------------------ 2. one owner at a time

def lock_of(exp: Path, pid: int, host: str) -> None:
    exp.mkdir(parents=True)
    (exp / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "start": "2025-01-02T03:04:05",
                                             "command": "python tools/train.py --config toy.yaml"}))


def test_a_live_run_owns_its_folder(config: Path, tmp_path: Path, capsys) -> None:
    exp = tmp_path / "exp" / "toy" / "default"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_of(exp, owner.pid, socket.gethostname())
        assert train(config, tmp_path / "exp") == 2
        message = one_error_line(capsys)
        assert f"'{exp}' is in use by another run (pid {owner.pid} on host {socket.gethostname()}, started " \
               f"2025-01-02T03:04:05: python tools/train.py --config toy.yaml)" in message
    finally:
        owner.kill()
        owner.wait()
    assert not (exp / "metrics.jsonl").exists()
    # the same process starting a second run into a folder it owns (two runs a second apart)
    with experiment_lock(tmp_path / "exp" / "toy" / "other"):
        assert train(config, tmp_path / "exp", "--exp-name", "other") == 2
        assert "is in use by another run (pid" in one_error_line(capsys)


def test_a_dead_runs_lock_is_taken_over(config: Path, tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    exp = tmp_path / "exp" / "toy" / "default"
    lock_of(exp, dead.pid, socket.gethostname())
    assert train(config, tmp_path / "exp", "--set", "scheduler.epochs=1") == 0
    assert any(f"taking over the lock of pid {dead.pid}" in r.getMessage() for r in caplog.records)
    assert not (exp / LOCK_FILE).exists()  # released at the end of the run


def test_another_hosts_lock_is_never_guessed_stale(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    lock_of(exp, 1, "some-other-host")
    with pytest.raises(ExperimentLockedError, match=r"pid 1 on host some-other-host.*if that run is no longer "
                                                    r"alive, delete '.*run\.lock'"):
        with experiment_lock(exp):
            pass
    assert json.loads((exp / LOCK_FILE).read_text())["host"] == "some-other-host"


# ------------------------------------------------------------------ 12. unreadable checkpoints

@pytest.fixture
def bad_checkpoints(tmp_path: Path) -> dict:
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(1000)}, "epoch": 1}, good)
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"hello, I am not a checkpoint\n",
             "text2": b"e not a checkpoint"}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pth"
        paths[name].write_bytes(content)
    return paths


CHECKPOINT_ERRORS = {"truncated": r"is not a readable checkpoint \(truncated, or not written by torch\.save: "
                                  r"RuntimeError: PytorchStreamReader",
                     "empty": r"is empty \(0 bytes",
                     "text": r"is not a readable checkpoint", "text2": r"is not a readable checkpoint"}


def test_unreadable_checkpoint_is_one_line_everywhere(config: Path, tmp_path: Path, capsys, bad_checkpoints) -> None:
    images = tmp_path / "img"
    for split in ("train", "val"):
        for c in range(2):
            (images / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(images / split / f"c{c}" / "0.png")
    image_cfg = tmp_path / "image.yaml"
    image_cfg.write_text(TINY_IMAGE + f"dataset: {{val: {{NAME: ImageNet, root: {images}, split: val, "
                                      f"input_size: 16, crop_pct: 1.0}}}}\n")
    root = tmp_path / "exp"
    assert train(config, root, "--set", "scheduler.epochs=1") == 0
    for name, path in bad_checkpoints.items():
        resume = root / "toy" / "resumed"
        resume.mkdir(parents=True, exist_ok=True)
        (resume / "last.pth").write_bytes(path.read_bytes())
        commands = {  # command -> (run it, the file it reads)
            "--finetune": (lambda: train(config, root, "--exp-name", f"ft_{name}", "--finetune", str(path)), path),
            "--resume": (lambda: train(config, root, "--exp-name", "resumed", "--resume"), resume / "last.pth"),
            "--test": (lambda: train(config, root, "--test", "--ckpt", str(path)), path),
            "visualize": (lambda: visualize.main(["--config", str(image_cfg), "--ckpt", str(path), "--out",
                                                  str(tmp_path / "x.png")]), path),
            "diagnose": (lambda: diagnose.main(["--config", str(image_cfg), "--ckpt", str(path)]), path),
        }
        capsys.readouterr()
        for command, (run, read) in commands.items():
            assert run() == 2, (name, command)
            message = one_error_line(capsys)
            assert len(message.strip().splitlines()) == 1 and f"'{read}'" in message, (name, command, message)
            assert re.search(CHECKPOINT_ERRORS[name], message), (name, command, message)


# ------------------------------------------------------------------ 12. disk full during a save

class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a disk filling up)."""

    def __init__(self, path: Path, room: int):
        self.file, self.room = open(path, "wb"), room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_disk_full_keeps_the_last_checkpoint(config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    opened = []

    def open_binary(path: Path):
        opened.append(path)
        return FullDisk(path, room=10**9 if len(opened) == 1 else 100)  # the second save finds the disk full

    monkeypatch.setattr(checkpoint, "_open_binary", open_binary)
    root = tmp_path / "exp"
    assert train(config, root) == 2
    exp = root / "toy" / "default"
    assert one_error_line(capsys).strip() == (f"error: no space left on device writing '{exp / 'last.pth'}'; "
                                              f"the checkpoint of epoch 1 is kept")
    assert load_checkpoint(exp / "last.pth")["epoch"] == 1
    assert not list(exp.glob(".*.tmp"))  # the partial file is gone
    # a copy that fails (best.pth on another file system, disk full) says the same
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    monkeypatch.setattr(checkpoint.shutil, "copyfile",
                        lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"no space left on device writing '.*best\.pth'; "
                                                              r"the checkpoint of epoch 1 is kept"):
        checkpoint.atomic_copy(exp / "last.pth", exp / "best.pth")
    assert load_checkpoint(exp / "best.pth")["epoch"] == 1
