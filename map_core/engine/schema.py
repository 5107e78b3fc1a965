"""The experiment config's schema, in one place: a frozen dataclass per engine section, the whole
config (:class:`ExperimentConfig`), and the optional sections that modalities register as fold
protocols. :func:`load_experiment` hands this schema to the loader (``map_core.config``).

Every number declares its range (``config.number``); the loader checks each value given, so a
negative learning rate or ``train.val_every: 0`` is a ConfigError naming the key and the file.
The class count is written once, as ``task.num_classes`` (:func:`fill_class_count`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Literal, Optional, Sequence, Tuple

from map_core import backends
from map_core.config import (Config, free, load_config, named, number, optional_sections, per_key, plain,
                             provenance, validate)
from map_core.errors import ConfigError
from map_core.registry import DATASETS, MODELS, TASKS, accepted_keys

SPLITS = ("train", "val", "test")
CLASS_COUNT = "num_classes"  # what model, dataset and task builders call the class count


@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizer:``. ``lr_batch_base: 512`` scales ``lr`` by total_batch_size / 512; ``layer_decay``
    (e.g. 0.75) scales each layer's lr by timm's BEiT-style groups; ``betas`` / ``eps`` are AdamW's,
    ``momentum`` SGD's (Nesterov). ``lr: 0`` keeps the weights as loaded (an evaluation baseline)."""

    NAME: Literal["adamw", "sgd"] = "adamw"
    lr: float = number(1e-3, ge=0)
    weight_decay: float = number(0.05, ge=0)
    betas: Tuple[float, float] = number((0.9, 0.999), ge=0, lt=1)
    eps: float = number(1e-8, gt=0)
    momentum: float = number(0.9, ge=0, lt=1)
    layer_decay: Optional[float] = number(None, gt=0, le=1)
    lr_batch_base: Optional[int] = number(None, ge=1)


@dataclass(frozen=True)
class SchedulerConfig:
    """``scheduler:``; linear warm-up from ``warmup_lr``, then ``cosine`` to ``min_lr``, ``poly``
    (``(1 - t / T) ** power`` from the end of the warm-up to the end of the run, to ``min_lr``) or
    ``step`` (the lr times ``decay_rate`` at each of ``milestones``), stepped per optimizer update.
    The run lasts ``epochs`` epochs, or ``iterations`` optimizer updates when that is set (the last
    epoch is then cut short); ``warmup_iterations`` and the ``milestones`` count updates when
    ``iterations`` is set, else ``warmup_epochs`` and the milestones count epochs."""

    NAME: Literal["cosine", "poly", "step"] = "cosine"
    epochs: int = number(300, ge=1)
    warmup_epochs: float = number(10.0, ge=0)
    min_lr: float = number(1e-6, ge=0)
    warmup_lr: float = number(1e-6, ge=0)
    iterations: Optional[int] = number(None, ge=1)
    warmup_iterations: int = number(0, ge=0)
    power: float = number(1.0, gt=0)
    milestones: Tuple[int, ...] = number((), ge=1)
    decay_rate: float = number(0.1, gt=0)


@dataclass(frozen=True)
class EMAConfig:
    """``train.ema:``; an exponential moving average of the weights (timm ``ModelEmaV3``), which
    then is what validation, ``--test`` and ``--vote`` evaluate."""

    enable: bool = False
    decay: float = number(0.9999, ge=0, le=1)
    warmup: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """``train:``; batch sizes are totals over all ranks and accumulation steps. ``precision: auto``
    is bf16 autocast on CUDA, fp32 on CPU. ``save_every`` N keeps ``epoch_XXXX.pth`` every N epochs
    (0: only last / best); ``max_steps_per_epoch`` caps the updates of an epoch."""

    total_batch_size: int = number(128, ge=1)
    val_batch_size: Optional[int] = number(None, ge=1)
    accum_steps: int = number(1, ge=1)
    clip_grad: Optional[float] = number(None, gt=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    ema: EMAConfig = field(default_factory=EMAConfig)
    num_workers: int = number(4, ge=0)
    log_every: int = number(20, ge=1)
    save_every: int = number(0, ge=0)
    val_every: int = number(1, ge=1)
    seed: int = number(0, ge=0)
    deterministic: bool = False
    max_steps_per_epoch: Optional[int] = number(None, ge=1)
    # the training step's path (engine.trainer.choose_step_path): each true, false or auto; compile
    # also "cuda" (compiled blocks inside the CUDA graphs, eager where graphs do not run: what the
    # long-run recipes ask for)
    compile: Literal["auto", "cuda", True, False] = "auto"  # torch.compile each repeated block (map_core.compile)
    compile_mode: Optional[str] = None  # a torch.compile mode, e.g. max-autotune-no-cudagraphs
    cuda_graphs: Literal["auto", True, False] = "auto"  # replay forward, loss, backward (map_core.graphs)


@dataclass(frozen=True)
class RuntimeConfig:
    """``runtime:``; process-level switches. ``device``: auto (CUDA when available), cpu or cuda;
    ``find_unused_parameters`` is passed to DistributedDataParallel; ``backends`` picks the
    implementation of each registered fast op, ``auto`` or a backend's name (``map_core.backends``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    find_unused_parameters: bool = False
    backends: Dict[str, str] = per_key(backends.ops, backends.names, "auto")


# ----------------------------------------------------------------------------- fold protocols
@dataclass(frozen=True)
class FoldProtocol:
    """An optional top-level section that turns one run into folds, registered by a modality (e.g.
    a few-shot protocol). ``schema``: the section's dataclass, with an int ``folds`` field;
    ``fold_config(cfg, k)``: the config of fold k. The engine trains each fold in ``fold_<k>/`` and
    writes the mean and std of their best metrics to ``<section>_summary.json``."""

    section: str
    schema: type
    fold_config: Callable[["ExperimentConfig", int], "ExperimentConfig"]

    @property
    def summary_file(self) -> str:
        return f"{self.section}_summary.json"


_FOLD_PROTOCOLS: Dict[str, FoldProtocol] = {}


def register_fold_protocol(protocol: FoldProtocol) -> FoldProtocol:
    """Accept ``protocol.section`` in configs (typed and validated like ``train:``); a run whose
    config has it trains once per fold (``map_core.engine.run``)."""
    known = _FOLD_PROTOCOLS.get(protocol.section)
    if known is not None and known.schema.__module__ != protocol.schema.__module__:
        raise KeyError(f"config section '{protocol.section}' is registered twice ({known.schema.__module__} and "
                       f"{protocol.schema.__module__})")
    _FOLD_PROTOCOLS[protocol.section] = protocol
    return protocol


def fold_protocols() -> Tuple[FoldProtocol, ...]:
    """Every registered fold protocol."""
    return tuple(_FOLD_PROTOCOLS.values())


def _fold_sections() -> Dict[str, type]:
    return {p.section: p.schema for p in _FOLD_PROTOCOLS.values()}


# ----------------------------------------------------------------------------- the whole config
@dataclass(frozen=True)
class ExperimentConfig:
    """A validated config, read by attribute: ``cfg.train.ema.enable``, ``cfg.model["NAME"]``.

    ``task``, ``model`` and ``dataset.<split>`` are open sections (``NAME`` plus the registered
    builder's keyword arguments); ``optional`` holds the registered optional sections the config
    has (:func:`register_fold_protocol`), each as its dataclass: ``cfg.optional[section]``.
    """

    task: Config = named(TASKS)
    model: Config = named(MODELS)
    dataset: Config = named(DATASETS, keys=SPLITS)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    optional: Dict[str, Any] = optional_sections(_fold_sections)
    vars: Config = free()  # free-form values for YAML anchors
    provenance: Dict[str, str] = provenance()

    def source(self, path: str) -> str:
        """The file (or 'command line') that set the dotted key ``path``."""
        return Config(provenance=self.provenance).source(path)

    def to_dict(self) -> dict:
        """Every section as plain dicts / lists, defaults included (for config.yaml and checkpoints)."""
        return plain(self)

    def fold_protocol(self) -> Optional[FoldProtocol]:
        """The fold protocol whose section this config has, or None (one run, no folds)."""
        found = [p for p in fold_protocols() if p.section in self.optional]
        if len(found) > 1:
            raise ConfigError(f"a config may have one fold section; this one has {', '.join(p.section for p in found)}")
        return found[0] if found else None


def fill_class_count(cfg: ExperimentConfig) -> None:
    """Write the class count once, as ``task.num_classes``: it fills the model's and each dataset's
    ``num_classes`` where their builders take that key. A value given there as well must agree
    (ConfigError naming both keys and files). :func:`load_experiment` calls it; so does a modality
    that changes the class count of a validated config (e.g. per fold)."""
    count = cfg.task.get(CLASS_COUNT)
    if count is None:
        return
    origin = cfg.source(f"task.{CLASS_COUNT}")
    targets = [("model", cfg.model, MODELS)] + [(f"dataset.{s}", d, DATASETS) for s, d in cfg.dataset.items()]
    for path, section, registry in targets:
        keys = accepted_keys(registry.get(section["NAME"]))
        if keys is None:  # **kwargs: the key given, else (models: timm's convention) num_classes
            keys = set(section) | ({CLASS_COUNT} if registry is MODELS else set())
        if CLASS_COUNT not in keys:
            continue
        if CLASS_COUNT in section and section[CLASS_COUNT] != count:
            raise ConfigError(
                f"the class count is given twice: task.{CLASS_COUNT}={count} (set in {origin}) and "
                f"{path}.{CLASS_COUNT}={section[CLASS_COUNT]} (set in {cfg.source(f'{path}.{CLASS_COUNT}')}); "
                f"give it once, as task.{CLASS_COUNT} (the model's and the datasets' class counts follow it)")
        if CLASS_COUNT not in section:
            section[CLASS_COUNT] = count
            cfg.provenance[f"{path}.{CLASS_COUNT}"] = f"{origin}, as task.{CLASS_COUNT}"


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load, override and validate an experiment config (the modalities imported first, so their
    models, datasets, tasks, ops and sections are known); the class count filled in."""
    cfg = validate(load_config(path, ExperimentConfig, overrides), ExperimentConfig)
    fill_class_count(cfg)
    return cfg
