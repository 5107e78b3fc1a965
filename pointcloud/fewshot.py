"""Few-shot ModelNet40 (Point-BERT's protocol) as a config section: ``fewshot: {way, shot, folds}``
makes a run one finetune per fold (``map_core.engine.run.run_fewshot``, mean and std of the best
metrics); this module types the section (:class:`FewshotConfig`, read by attribute like the engine
sections: ``cfg.fewshot.way``) and says what a fold changes in the config."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from map_core.config import Config, ExperimentConfig
from map_core.modalities import register_folds
from map_core.registry import DATASETS, MODELS, TASKS, Registry, accepted_keys


@dataclass(frozen=True)
class FewshotConfig:
    """``fewshot:``; one finetune per fold, mean and std of the best metric reported."""

    way: int = 5
    shot: int = 10
    folds: int = 10


def _set_accepted(section: Config, registry: Registry, values: Mapping[str, Any]) -> None:
    """Set each of ``values`` in ``section`` where its builder (``registry[section.NAME]``) takes that
    key or the section already has it (builders with ``**kwargs``)."""
    keys = accepted_keys(registry.get(section["NAME"])) or set()
    for key, value in values.items():
        if key in keys or key in section:
            section[key] = value


def fewshot_fold_config(cfg: ExperimentConfig, fold: int) -> ExperimentConfig:
    """``cfg`` for one few-shot fold: ``fewshot.way`` / ``shot`` and ``fold`` go into every dataset
    section, ``way`` into ``task.num_classes`` and ``model.cls_dim`` / ``num_classes`` (where the
    builder takes the key), so ``--set fewshot.way=10 fewshot.shot=20`` changes the whole run."""
    fold_cfg = copy.deepcopy(cfg)
    way, shot = cfg.fewshot.way, cfg.fewshot.shot
    for section in fold_cfg.dataset.values():
        _set_accepted(section, DATASETS, {"way": way, "shot": shot, "fold": fold})
    _set_accepted(fold_cfg.task, TASKS, {"num_classes": way})
    _set_accepted(fold_cfg.model, MODELS, {"cls_dim": way, "num_classes": way})
    return fold_cfg


register_folds("fewshot", FewshotConfig, fewshot_fold_config)
