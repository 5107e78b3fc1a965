"""Config loading: _base_ inheritance, others, --set, strict validation with provenance, typed
engine sections, the class count written once."""
import copy
import dataclasses
from pathlib import Path

import pytest

from map_core.backends import BackendsConfig
from map_core.config import CLASS_COUNT_KEYS, ExperimentConfig, dump_config, load_config, validate
from map_core.engine.distributed import RuntimeConfig
from map_core.engine.optim import OptimizerConfig, SchedulerConfig
from map_core.engine.trainer import EMAConfig, TrainConfig
from map_core.errors import ConfigError
from map_core.registry import MODELS
from pointcloud.fewshot import FewshotConfig  # registers the optional fewshot: section
import tests.engine_toy  # noqa: F401  (registers toy_mlp, toy_blobs, toy_classify)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path / "_base_/optim.yaml", "optimizer: {NAME: adamw, lr: 5e-4, weight_decay: 0.05}\n")
    write(tmp_path / "_base_/data.yaml", "NAME: toy_blobs\nsize: 64\nnoise: 0.1\n")
    write(tmp_path / "_base_/runtime.yaml",
          "_base_: optim.yaml\ntrain: {total_batch_size: 16, num_workers: 0}\nscheduler: {epochs: 3}\n")
    write(tmp_path / "exp/child.yaml", """
_base_: ../_base_/runtime.yaml
task: {NAME: toy_classify, num_classes: 4}
model: {NAME: toy_mlp, hidden: 8}
dataset:
  train: {_base_: ../_base_/data.yaml, others: {seed: 3}}
  val: {_base_: ../_base_/data.yaml, others: {size: 16}}
optimizer: {lr: 1.0e-3}
""")
    return tmp_path / "exp/child.yaml"


def test_two_level_inheritance_and_others(tree: Path) -> None:
    cfg = validate(load_config(tree))
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0.05  # child over grand-base
    assert cfg.train.total_batch_size == 16 and cfg.scheduler.epochs == 3
    assert cfg.dataset.train.seed == 3 and cfg.dataset.train.size == 64
    assert cfg.dataset.val.size == 16 and cfg.dataset.val.noise == 0.1
    assert cfg.train.ema.enable is False and cfg.train.accum_steps == 1  # defaults filled
    assert cfg.source("optimizer.weight_decay").endswith("_base_/optim.yaml")
    assert cfg.source("optimizer.lr").endswith("exp/child.yaml")


def test_float_without_dot_is_float(tree: Path) -> None:
    cfg = load_config(tree, ["optimizer.lr=5e-4"])
    assert cfg.optimizer.lr == 5e-4 and isinstance(cfg.optimizer.lr, float)


def test_overrides_are_typed(tree: Path) -> None:
    cfg = validate(load_config(tree, ["model.hidden=12", "optimizer.betas=[0.8,0.9]",
                                      "train.deterministic=true", "train.ema.decay=0.99"]))
    assert cfg.model.hidden == 12 and cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.train.deterministic is True and cfg.train.ema.decay == 0.99
    assert cfg.source("model.hidden") == "command line"


def test_override_unknown_key_names_closest(tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer.weight_decy.*command line.*optimizer.weight_decay"):
        load_config(tree, ["optimizer.weight_decy=0.1"])


def test_unknown_key_names_key_file_and_closest(tree: Path) -> None:
    write(tree.parent / "bad.yaml", "_base_: child.yaml\noptimizer: {weight_decy: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        validate(load_config(tree.parent / "bad.yaml"))
    message = str(err.value)
    assert "'optimizer.weight_decy'" in message and "bad.yaml" in message
    assert "did you mean 'optimizer.weight_decay'" in message


def test_named_section_checked_against_builder(tree: Path) -> None:
    write(tree.parent / "bad_model.yaml", "_base_: child.yaml\nmodel: {hiden: 4}\n")
    with pytest.raises(ConfigError, match=r"'model.hiden'.*bad_model.yaml.*did you mean 'model.hidden'"):
        validate(load_config(tree.parent / "bad_model.yaml"))
    with pytest.raises(ConfigError, match=r"dataset.train.sise.*command line.*dataset.train.size"):
        validate(load_config(tree, ["dataset.train.sise=3"]))


def test_wrong_type_is_reported(tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"'optimizer.lr'.*command line.*expects float.*'fast'"):
        validate(load_config(tree, ["optimizer.lr=fast"]))
    with pytest.raises(ConfigError, match=r"train.total_batch_size.*expects int"):
        validate(load_config(tree, ["train.total_batch_size=1.5"]))


def test_cycle_is_an_error_naming_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\nx: 1\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\ny: 2\n")
    with pytest.raises(ConfigError, match=r"cycle.*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_dump_roundtrip(tree: Path, tmp_path: Path) -> None:
    cfg = validate(load_config(tree))
    dump_config(cfg, tmp_path / "out.yaml")
    again = validate(load_config(tmp_path / "out.yaml"))
    assert again == cfg


# ----------------------------------------------------------------------------- typed sections
def test_engine_sections_are_typed_and_read_by_attribute(tree: Path) -> None:
    cfg = validate(load_config(tree))
    assert isinstance(cfg, ExperimentConfig)
    assert isinstance(cfg.optimizer, OptimizerConfig) and isinstance(cfg.scheduler, SchedulerConfig)
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.train.ema, EMAConfig)
    assert isinstance(cfg.runtime, RuntimeConfig) and isinstance(cfg.runtime.backends, BackendsConfig)
    assert cfg.fewshot is None  # no fewshot: section
    assert cfg.optimizer.lr == 1e-3 and cfg.scheduler.epochs == 3 and cfg.train.total_batch_size == 16
    with pytest.raises(TypeError):
        cfg.train["ema"]  # one way to read a typed section: by attribute
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optimizer.lr = 1.0


def test_defaults_come_from_the_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path / "bare.yaml", "task: {NAME: toy_classify}\nmodel: {NAME: toy_mlp}\n"
                                         "fewshot: {}\n")
    cfg = validate(load_config(path))
    for section in (cfg.optimizer, cfg.scheduler, cfg.train, cfg.train.ema, cfg.runtime, cfg.fewshot):
        for f in dataclasses.fields(section):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert getattr(section, f.name) == default, f.name
    assert cfg.optimizer.betas == (0.9, 0.999) and cfg.train.ema.decay == 0.9999  # the documented values
    assert cfg.fewshot == FewshotConfig(way=5, shot=10, folds=10)
    dumped = cfg.to_dict()  # config.yaml lists every key a run used, defaults included
    assert dumped["train"]["ema"] == {"enable": False, "decay": 0.9999, "warmup": False}
    assert set(dumped["runtime"]["backends"]) == {"scan", "conv", "fps", "knn"}


def test_unknown_nested_or_top_level_key_names_file_and_closest(tree: Path) -> None:
    write(tree.parent / "ema.yaml", "_base_: child.yaml\ntrain: {ema: {decy: 0.9}}\n")
    with pytest.raises(ConfigError, match=r"'train.ema.decy' \(set in .*ema.yaml\); did you mean 'train.ema.decay'"):
        validate(load_config(tree.parent / "ema.yaml"))
    write(tree.parent / "top.yaml", "_base_: child.yaml\noptimiser: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"'optimiser' \(set in .*top.yaml\); did you mean 'optimizer'"):
        validate(load_config(tree.parent / "top.yaml"))
    with pytest.raises(ConfigError, match=r"'train.ema.decy' \(set in command line\); did you mean 'train.ema.decay'"):
        load_config(tree, ["train.ema.decy=0.9"])


def test_set_on_typed_fields_coerces_and_checks(tree: Path) -> None:
    cfg = validate(load_config(tree, ["scheduler.warmup_epochs=3", "train.total_batch_size=32.0",
                                      "optimizer.betas=[0.8, 0.95]", "train.clip_grad=null",
                                      "runtime.backends.scan=torch", "train.precision=bf16"]))
    assert cfg.scheduler.warmup_epochs == 3.0 and isinstance(cfg.scheduler.warmup_epochs, float)
    assert cfg.train.total_batch_size == 32 and isinstance(cfg.train.total_batch_size, int)
    assert cfg.optimizer.betas == (0.8, 0.95) and cfg.train.clip_grad is None
    assert cfg.runtime.backends.scan == "torch" and cfg.train.precision == "bf16"
    assert cfg.source("train.precision") == "command line"
    with pytest.raises(ConfigError, match=r"'train.precision' \(set in command line\) expects one of "
                                          r"auto, bf16, fp16, fp32, got 'bf61'; did you mean 'bf16'"):
        validate(load_config(tree, ["train.precision=bf61"]))
    with pytest.raises(ConfigError, match=r"'optimizer.betas' .* expects 2 values, got 1"):
        validate(load_config(tree, ["optimizer.betas=[0.9]"]))
    with pytest.raises(ConfigError, match=r"'train.ema.enable' .* expects bool, got 'maybe'"):
        validate(load_config(tree, ["train.ema.enable=maybe"]))
    with pytest.raises(ConfigError, match=r"'optimizer.NAME' .* expects one of adamw, sgd, got 'adam'"):
        validate(load_config(tree, ["optimizer.NAME=adam"]))


# ----------------------------------------------------------------------------- the class count
def test_task_num_classes_fills_model_and_datasets(tree: Path) -> None:
    cfg = validate(load_config(tree, ["task.num_classes=6"]))
    assert cfg.model.num_classes == 6  # toy_mlp takes num_classes
    assert cfg.dataset.train.num_classes == 6 and cfg.dataset.val.num_classes == 6  # toy_blobs too
    assert cfg.source("model.num_classes") == "command line, as task.num_classes"
    if "toy_cls_dim" not in MODELS:
        MODELS.register("toy_cls_dim", lambda hidden=8, cls_dim=40: None)
    cfg = validate(load_config(tree, ["model.NAME=toy_cls_dim"]))
    assert cfg.model.cls_dim == 4 and "num_classes" not in cfg.model
    assert validate(load_config(tree, ["model.num_classes=4"])).model.num_classes == 4  # agreeing: fine


def test_class_count_given_twice_and_different_is_an_error(tree: Path) -> None:
    write(tree.parent / "twice.yaml", "_base_: child.yaml\nmodel: {num_classes: 5}\n")
    with pytest.raises(ConfigError, match=r"class count is given twice: task.num_classes=4 \(set in .*child.yaml\) "
                                          r"and model.num_classes=5 \(set in .*twice.yaml\)"):
        validate(load_config(tree.parent / "twice.yaml"))
    with pytest.raises(ConfigError, match=r"dataset.val.num_classes=3 \(set in command line\)"):
        validate(load_config(tree, ["dataset.val.num_classes=3"]))


def test_repository_configs_validate_and_give_the_class_count_once() -> None:
    import image, pointcloud  # noqa: F401  (register the builders)

    paths = [p for p in sorted((REPO / "configs").rglob("*.yaml")) if "_base_" not in p.parts]
    assert len(paths) > 20
    for path in paths:
        loaded = load_config(path)
        if "cells" in loaded:  # a tools/ablate.py grid, not an experiment
            continue
        cfg = validate(copy.deepcopy(loaded))
        if cfg.task.get("num_classes") is None:
            continue
        for section in [loaded.model, *loaded.get("dataset", {}).values()]:
            assert not set(CLASS_COUNT_KEYS) & set(section), f"{path}: class count repeated in {section}"
        assert cfg.model.get("num_classes", cfg.model.get("cls_dim")) == cfg.task.num_classes, path
