"""Every grid under configs/ablation/ expands, and every job it would run has a valid config."""
from pathlib import Path

import pytest

from map_core.engine.schema import load_experiment
from map_core.modalities import load_modalities
from tools import ablate

ROOT = Path(__file__).resolve().parents[1]

GRIDS = sorted(p for p in (ROOT / "configs" / "ablation").glob("*.yaml") if "cells" in p.read_text())


@pytest.mark.parametrize("grid_path", GRIDS, ids=lambda p: p.stem)
def test_grid_jobs_have_valid_configs(grid_path, tmp_path):
    load_modalities()
    grid = ablate.load_grid(grid_path)
    jobs = ablate.expand(grid, tmp_path)
    assert jobs and all(job.after is None or job.after.endswith("/pretrain") for job in jobs)
    for config, sets in {(job.config, tuple(job.sets)) for job in jobs}:
        load_experiment(ROOT / config, list(sets))


def test_partseg_grid_reuses_the_shapes_grid_pretraining(tmp_path):
    """Same modality, cells and pretraining overrides: every pretraining job of the part-segmentation
    grid is a job of the main shapes grid, so one --out runs each pretraining once."""
    main = ablate.expand(ablate.load_grid(ROOT / "configs/ablation/shapes_grid.yaml"), tmp_path)
    parts = ablate.expand(ablate.load_grid(ROOT / "configs/ablation/shapes_partseg_grid.yaml"), tmp_path)
    main_pretrain = {job.id: (job.config, job.sets) for job in main if job.kind == "pretrain"}
    part_pretrain = {job.id: (job.config, job.sets) for job in parts if job.kind == "pretrain"}
    assert part_pretrain and all(main_pretrain[i] == spec for i, spec in part_pretrain.items())
    assert {job.kind for job in parts} == {"pretrain", "partseg"}
