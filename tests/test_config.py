"""Config loading: _base_ inheritance, others, --set, strict validation with provenance, typed
engine sections, the class count written once."""
import dataclasses
import typing
from pathlib import Path

import pytest

from map_core import config
from map_core.config import dump_config, load_config
from map_core.engine.schema import (CLASS_COUNT, EMAConfig, ExperimentConfig, OptimizerConfig, RuntimeConfig,
                                    SchedulerConfig, TrainConfig, load_experiment)
from map_core.errors import ConfigError
from map_core.registry import MODELS
from pointcloud.fewshot import FewshotConfig  # registers the optional fewshot: section (and fps / knn)
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
    cfg = load_experiment(tree)
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0.05  # child over grand-base
    assert cfg.train.total_batch_size == 16 and cfg.scheduler.epochs == 3
    assert cfg.dataset.train.seed == 3 and cfg.dataset.train.size == 64
    assert cfg.dataset.val.size == 16 and cfg.dataset.val.noise == 0.1
    assert cfg.train.ema.enable is False and cfg.train.accum_steps == 1  # defaults filled
    assert cfg.source("optimizer.weight_decay").endswith("_base_/optim.yaml")
    assert cfg.source("optimizer.lr").endswith("exp/child.yaml")


def test_float_without_dot_is_float(tree: Path) -> None:
    cfg = load_config(tree, ExperimentConfig, ["optimizer.lr=5e-4"])
    assert cfg.optimizer.lr == 5e-4 and isinstance(cfg.optimizer.lr, float)


def test_overrides_are_typed(tree: Path) -> None:
    cfg = load_experiment(tree, ["model.hidden=12", "optimizer.betas=[0.8,0.9]",
                                      "train.deterministic=true", "train.ema.decay=0.99"])
    assert cfg.model.hidden == 12 and cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.train.deterministic is True and cfg.train.ema.decay == 0.99
    assert cfg.source("model.hidden") == "command line"


def test_override_unknown_key_names_closest(tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer.weight_decy.*command line.*optimizer.weight_decay"):
        load_config(tree, ExperimentConfig, ["optimizer.weight_decy=0.1"])


def test_unknown_key_names_key_file_and_closest(tree: Path) -> None:
    write(tree.parent / "bad.yaml", "_base_: child.yaml\noptimizer: {weight_decy: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(tree.parent / "bad.yaml")
    message = str(err.value)
    assert "'optimizer.weight_decy'" in message and "bad.yaml" in message
    assert "did you mean 'optimizer.weight_decay'" in message


def test_named_section_checked_against_builder(tree: Path) -> None:
    write(tree.parent / "bad_model.yaml", "_base_: child.yaml\nmodel: {hiden: 4}\n")
    with pytest.raises(ConfigError, match=r"'model.hiden'.*bad_model.yaml.*did you mean 'model.hidden'"):
        load_experiment(tree.parent / "bad_model.yaml")
    with pytest.raises(ConfigError, match=r"dataset.train.sise.*command line.*dataset.train.size"):
        load_experiment(tree, ["dataset.train.sise=3"])


def test_wrong_type_is_reported(tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"'optimizer.lr'.*command line.*expects float.*'fast'"):
        load_experiment(tree, ["optimizer.lr=fast"])
    with pytest.raises(ConfigError, match=r"train.total_batch_size.*expects int"):
        load_experiment(tree, ["train.total_batch_size=1.5"])


def test_cycle_is_an_error_naming_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\nx: 1\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\ny: 2\n")
    with pytest.raises(ConfigError, match=r"cycle.*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_dump_roundtrip(tree: Path, tmp_path: Path) -> None:
    cfg = load_experiment(tree)
    dump_config(cfg, tmp_path / "out.yaml")
    again = load_experiment(tmp_path / "out.yaml")
    assert again == cfg


# ----------------------------------------------------------------------------- typed sections
def test_engine_sections_are_typed_and_read_by_attribute(tree: Path) -> None:
    cfg = load_experiment(tree)
    assert isinstance(cfg, ExperimentConfig)
    assert isinstance(cfg.optimizer, OptimizerConfig) and isinstance(cfg.scheduler, SchedulerConfig)
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.train.ema, EMAConfig)
    assert isinstance(cfg.runtime, RuntimeConfig) and cfg.runtime.backends["scan"] == "auto"
    assert cfg.optional == {}  # no fewshot: section
    assert cfg.optimizer.lr == 1e-3 and cfg.scheduler.epochs == 3 and cfg.train.total_batch_size == 16
    with pytest.raises(TypeError):
        cfg.train["ema"]  # one way to read a typed section: by attribute
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optimizer.lr = 1.0


def test_defaults_come_from_the_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path / "bare.yaml", "task: {NAME: toy_classify}\nmodel: {NAME: toy_mlp}\n"
                                         "fewshot: {}\n")
    cfg = load_experiment(path)
    for section in (cfg.optimizer, cfg.scheduler, cfg.train, cfg.train.ema, cfg.optional["fewshot"]):
        for f in dataclasses.fields(section):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert getattr(section, f.name) == default, f.name
    assert cfg.optimizer.betas == (0.9, 0.999) and cfg.train.ema.decay == 0.9999  # the documented values
    assert cfg.optional["fewshot"] == FewshotConfig(way=5, shot=10, folds=10)
    assert cfg.runtime.device == "auto" and not cfg.runtime.find_unused_parameters
    dumped = cfg.to_dict()  # config.yaml lists every key a run used, defaults included
    assert dumped["train"]["ema"] == {"enable": False, "decay": 0.9999, "warmup": False}
    assert dumped["runtime"]["backends"] == {"scan": "auto", "conv": "auto", "fps": "auto", "knn": "auto"}
    assert dumped["fewshot"] == {"way": 5, "shot": 10, "folds": 10}  # at top level, as written


def test_unknown_nested_or_top_level_key_names_file_and_closest(tree: Path) -> None:
    write(tree.parent / "ema.yaml", "_base_: child.yaml\ntrain: {ema: {decy: 0.9}}\n")
    with pytest.raises(ConfigError, match=r"'train.ema.decy' \(set in .*ema.yaml\); did you mean 'train.ema.decay'"):
        load_experiment(tree.parent / "ema.yaml")
    write(tree.parent / "top.yaml", "_base_: child.yaml\noptimiser: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"'optimiser' \(set in .*top.yaml\); did you mean 'optimizer'"):
        load_experiment(tree.parent / "top.yaml")
    with pytest.raises(ConfigError, match=r"'train.ema.decy' \(set in command line\); did you mean 'train.ema.decay'"):
        load_config(tree, ExperimentConfig, ["train.ema.decy=0.9"])


def test_set_on_typed_fields_coerces_and_checks(tree: Path) -> None:
    cfg = load_experiment(tree, ["scheduler.warmup_epochs=3", "train.total_batch_size=32.0",
                                      "optimizer.betas=[0.8, 0.95]", "train.clip_grad=null",
                                      "runtime.backends.scan=torch", "train.precision=bf16"])
    assert cfg.scheduler.warmup_epochs == 3.0 and isinstance(cfg.scheduler.warmup_epochs, float)
    assert cfg.train.total_batch_size == 32 and isinstance(cfg.train.total_batch_size, int)
    assert cfg.optimizer.betas == (0.8, 0.95) and cfg.train.clip_grad is None
    assert cfg.runtime.backends["scan"] == "torch" and cfg.train.precision == "bf16"
    assert cfg.source("train.precision") == "command line"
    with pytest.raises(ConfigError, match=r"'train.precision' \(set in command line\) expects one of "
                                          r"auto, bf16, fp16, fp32, got 'bf61'; did you mean 'bf16'"):
        load_experiment(tree, ["train.precision=bf61"])
    with pytest.raises(ConfigError, match=r"'optimizer.betas' .* expects 2 values, got 1"):
        load_experiment(tree, ["optimizer.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"'train.ema.enable' .* expects bool, got 'maybe'"):
        load_experiment(tree, ["train.ema.enable=maybe"])
    with pytest.raises(ConfigError, match=r"'optimizer.NAME' .* expects one of adamw, sgd, got 'adam'"):
        load_experiment(tree, ["optimizer.NAME=adam"])


# ----------------------------------------------------------------------------- the class count
def test_task_num_classes_fills_model_and_datasets(tree: Path) -> None:
    cfg = load_experiment(tree, ["task.num_classes=6"])
    assert cfg.model.num_classes == 6  # toy_mlp takes num_classes
    assert cfg.dataset.train.num_classes == 6 and cfg.dataset.val.num_classes == 6  # toy_blobs too
    assert cfg.source("model.num_classes") == "command line, as task.num_classes"
    if "toy_no_count" not in MODELS:
        MODELS.register("toy_no_count", lambda hidden=8, width=40: None)
    cfg = load_experiment(tree, ["model.NAME=toy_no_count"])
    assert "num_classes" not in cfg.model  # a builder without the key gets none
    assert load_experiment(tree, ["model.num_classes=4"]).model.num_classes == 4  # agreeing: fine


def test_class_count_given_twice_and_different_is_an_error(tree: Path) -> None:
    write(tree.parent / "twice.yaml", "_base_: child.yaml\nmodel: {num_classes: 5}\n")
    with pytest.raises(ConfigError, match=r"class count is given twice: task.num_classes=4 \(set in .*child.yaml\) "
                                          r"and model.num_classes=5 \(set in .*twice.yaml\)"):
        load_experiment(tree.parent / "twice.yaml")
    with pytest.raises(ConfigError, match=r"dataset.val.num_classes=3 \(set in command line\)"):
        load_experiment(tree, ["dataset.val.num_classes=3"])


def test_repository_configs_validate_and_give_the_class_count_once() -> None:
    import image, pointcloud  # noqa: F401  (register the builders)

    paths = [p for p in sorted((REPO / "configs").rglob("*.yaml")) if "_base_" not in p.parts]
    assert len(paths) > 20
    for path in paths:
        loaded = load_config(path)
        if "cells" in loaded:  # a tools/ablate.py grid, not an experiment
            continue
        cfg = load_experiment(path)
        if cfg.task.get(CLASS_COUNT) is None:
            continue
        for section in [loaded.model, *loaded.get("dataset", {}).values()]:
            assert CLASS_COUNT not in section, f"{path}: class count repeated in {section}"
        assert cfg.model[CLASS_COUNT] == cfg.task[CLASS_COUNT], path


# ----------------------------------------------------------------------------- numeric ranges
SECTIONS = {"optimizer": OptimizerConfig, "scheduler": SchedulerConfig, "train": TrainConfig,
            "train.ema": EMAConfig, "fewshot": FewshotConfig}


def numeric_fields():
    """(key path, bounds) of every int / float field (a tuple of floats too) of the typed sections."""
    for prefix, schema in SECTIONS.items():
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            if any(a in (int, float) or float in typing.get_args(a) for a in args):
                yield f"{prefix}.{f.name}", f.metadata.get(config.METADATA), int not in args


def outside(limits: config.Bounds, real: bool) -> list:
    """Values just outside each bound: below ge, at gt, at lt, above le; and NaN for floats."""
    values = [float("nan")] if real else []
    values += [limits.ge - 1] if limits.ge is not None else []
    values += [limits.gt] if limits.gt is not None else []
    values += [limits.le + 1] if limits.le is not None else []
    values += [limits.lt] if limits.lt is not None else []
    return values


@pytest.mark.parametrize("key,limits,real", list(numeric_fields()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_number_declares_its_range_and_is_checked(tree: Path, key: str, limits, real: bool) -> None:
    assert isinstance(limits, config.Bounds), f"{key} declares no range"
    cfg = load_experiment(tree, ["fewshot.way=5"])
    default = cfg.optional if key.startswith("fewshot") else cfg
    for part in key.split("."):
        default = default[part] if isinstance(default, dict) else getattr(default, part)
    for item in default if isinstance(default, tuple) else [default]:
        assert item is None or limits.holds(item), f"the default of {key} is outside its range"
    for value in outside(limits, real):
        item = repr(value).replace("nan", ".nan")
        text = f"[{item}, {item}]" if isinstance(default, tuple) else item
        with pytest.raises(ConfigError, match=rf"'{key}' \(set in command line\) must be "):
            load_experiment(tree, [f"{key}={text}"])


@pytest.mark.parametrize("setting,message", [
    ("train.clip_grad=-1", "'train.clip_grad' (set in command line) must be > 0, got -1.0"),
    ("scheduler.epochs=0", "'scheduler.epochs' (set in command line) must be >= 1, got 0"),
    ("scheduler.epochs=-3", "must be >= 1, got -3"),
    ("train.max_steps_per_epoch=-1", "'train.max_steps_per_epoch' (set in command line) must be >= 1, got -1"),
    ("train.val_batch_size=0", "'train.val_batch_size' (set in command line) must be >= 1, got 0"),
    ("optimizer.lr=-1", "'optimizer.lr' (set in command line) must be >= 0, got -1.0"),
    ("optimizer.lr=.inf", "'optimizer.lr' (set in command line) must be finite and >= 0, got inf"),
    ("train.val_every=0", "'train.val_every' (set in command line) must be >= 1, got 0"),
    ("train.num_workers=-1", "'train.num_workers' (set in command line) must be >= 0, got -1"),
    ("optimizer.betas=[0.9, 1.5]", "'optimizer.betas' (set in command line) must be >= 0 and < 1, got 1.5"),
    ("fewshot.way=1", "'fewshot.way' (set in command line) must be >= 2, got 1"),
    ("runtime.device=gpu", "'runtime.device' (set in command line) expects one of auto, cpu, cuda, got 'gpu'"),
    ("runtime.backends.scan=warp", "'runtime.backends.scan' (set in command line) expects one of auto, "),
])
def test_the_reported_bad_values_are_named(tree: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_experiment(tree, [setting])
    assert message in str(err.value)


def test_a_range_in_a_file_names_the_file(tree: Path) -> None:
    write(tree.parent / "neg.yaml", "_base_: child.yaml\ntrain: {clip_grad: -1}\n")
    with pytest.raises(ConfigError, match=r"'train.clip_grad' \(set in .*neg.yaml\) must be > 0, got -1.0"):
        load_experiment(tree.parent / "neg.yaml")


# ----------------------------------------------------------------------------- malformed files and keys
@pytest.mark.parametrize("text,message", [
    ("_base_: 5\n", r"bad.yaml: '_base_' must be a file path or a list of file paths, got 5"),
    ("train: {_base_: [a.yaml, 3]}\n", r"bad.yaml: 'train._base_' must be a file path or a list"),
    ("train: {others: 3}\n", r"bad.yaml: 'train.others' must be a mapping, got 3"),
    ("optimizer: {1: 2}\n", r"bad.yaml: key 1 \(int\) under 'optimizer': config keys must be strings"),
    ("vars: [{true: 1}]\n", r"bad.yaml: key True \(bool\) under 'vars\[0\]': config keys must be strings"),
    ("a: &a [*a]\n", r"bad.yaml: 'a\[0\]' contains itself \(a recursive YAML alias\)"),
    ("task: {NAME: toy_classify}\nmodel: {NAME: toy_mlp}\nvars: 5\n", r"'vars' \(set in .*bad.yaml\) must be a mapping, got 5"),
])
def test_malformed_configs_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_a_latin1_file_is_named_with_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("# caf\u00e9\noptimizer: {lr: 0.1}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text \(byte 0xe9 at offset 5\); save the file as UTF-8"):
        load_config(path)


def test_alias_expansion_is_capped(tmp_path: Path) -> None:
    # 1.8 KB of YAML: nine levels, each a list of ten aliases of the one before (10^9 values expanded)
    levels = ["l0: &l0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = write(tmp_path / "bomb.yaml", "vars:\n" + "\n".join("  " + line for line in levels) + "\n")
    assert path.stat().st_size < 2000
    with pytest.raises(ConfigError, match=r"bomb.yaml: expands to more than 100,000 values"):
        load_config(path)
    # aliases that stay small are fine: each use counts, and the total is under the cap
    small = write(tmp_path / "small.yaml", "vars: {a: &a [1, 2, 3]}\ntrain: {total_batch_size: 8}\n"
                                           "task: {NAME: toy_classify}\nmodel: {NAME: toy_mlp}\n")
    assert load_experiment(small).vars.a == [1, 2, 3]


def test_set_below_a_value_says_it_is_a_value(tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"--set train.seed.x=1: 'train.seed' is a value \(int\), not a section"):
        load_config(tree, ExperimentConfig, ["train.seed.x=1"])
    with pytest.raises(ConfigError, match=r"'model.hidden' is a value \(8\), not a section"):
        load_config(tree, ExperimentConfig, ["model.hidden.x=1"])
    with pytest.raises(ConfigError, match=r"'runtime.backends.scan' is a value \(str\), not a section"):
        load_config(tree, ExperimentConfig, ["runtime.backends.scan.x=torch"])
