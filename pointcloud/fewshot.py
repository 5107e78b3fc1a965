"""Few-shot ModelNet40 (Point-BERT's protocol) as a fold protocol of the engine: a config with
``fewshot: {way, shot, folds}`` trains one finetune per fold (``map_core.engine.run.run_folds``,
mean and std of the best metrics in ``fewshot_summary.json``). This module types the section
(:class:`FewshotConfig`, read as ``cfg.optional["fewshot"]``) and says what a fold changes in the
config (:func:`fewshot_fold_config`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from map_core.config import Config, number
from map_core.engine.schema import CLASS_COUNT, ExperimentConfig, FoldProtocol, fill_class_count, register_fold_protocol
from map_core.registry import DATASETS, MODELS, TASKS, Registry, accepted_keys


@dataclass(frozen=True)
class FewshotConfig:
    """``fewshot:``; one finetune per fold, mean and std of the best metric reported."""

    way: int = number(5, ge=2)
    shot: int = number(10, ge=1)
    folds: int = number(10, ge=1)


def _takes(section: Config, registry: Registry, key: str) -> bool:
    """Whether ``section``'s builder (``registry[section.NAME]``) takes ``key``, or the section already
    has it (builders with ``**kwargs``)."""
    return key in (accepted_keys(registry.get(section["NAME"])) or set()) or key in section


def _set_accepted(section: Config, registry: Registry, values: Mapping[str, Any]) -> None:
    """Set each of ``values`` in ``section`` where its builder takes that key (see :func:`_takes`)."""
    for key, value in values.items():
        if _takes(section, registry, key):
            section[key] = value


def fewshot_fold_config(cfg: ExperimentConfig, fold: int) -> ExperimentConfig:
    """``cfg`` for one few-shot fold: ``fewshot.way`` / ``shot`` and ``fold`` go into every dataset
    section (where the builder takes the key), and ``way`` is the fold's class count, written once as
    ``task.num_classes``; ``fill_class_count`` then gives it to the model's and the datasets'
    ``num_classes`` as for any config. So ``--set fewshot.way=10 fewshot.shot=20`` changes the whole
    run."""
    fold_cfg = copy.deepcopy(cfg)
    way, shot = cfg.optional["fewshot"].way, cfg.optional["fewshot"].shot
    for section in fold_cfg.dataset.values():
        _set_accepted(section, DATASETS, {"way": way, "shot": shot, "fold": fold})
    if not _takes(fold_cfg.task, TASKS, CLASS_COUNT):  # a task without a class count: set the model's
        _set_accepted(fold_cfg.model, MODELS, {CLASS_COUNT: way})
        return fold_cfg
    # the config's class count (and the copies validation made of it) gives way to fewshot.way
    sections = [("model", fold_cfg.model)] + [(f"dataset.{s}", d) for s, d in fold_cfg.dataset.items()]
    for path, section in sections:
        if CLASS_COUNT in section:
            del section[CLASS_COUNT]
            fold_cfg.provenance.pop(f"{path}.{CLASS_COUNT}", None)
    fold_cfg.task[CLASS_COUNT] = way
    fold_cfg.provenance[f"task.{CLASS_COUNT}"] = f"{cfg.source('fewshot.way')}, as fewshot.way"
    fill_class_count(fold_cfg)
    return fold_cfg


register_fold_protocol(FoldProtocol("fewshot", FewshotConfig, fewshot_fold_config))
