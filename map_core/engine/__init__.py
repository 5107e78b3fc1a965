"""The modality-free training engine. Config layout (``map_core.config``)::

    task: {NAME: pretrain}              # classify (num_classes, label_smoothing, mixup), linear_svm (C)
    model: {NAME: <registered model>, ...its keyword arguments}
    dataset: {train: {NAME: ..., ...}, val: {...}, test: {...}}
    optimizer: ...                      # OptimizerConfig  (map_core/engine/optim.py)
    scheduler: ...                      # SchedulerConfig  (map_core/engine/optim.py)
    train: {..., ema: ...}              # TrainConfig, EMAConfig  (map_core/engine/trainer.py)
    runtime: {..., backends: ...}       # RuntimeConfig (distributed.py), BackendsConfig (map_core/backends.py)
    fewshot: ...                        # optional, from the point-cloud modality: FewshotConfig
                                        # (pointcloud/fewshot.py); one finetune per fold (run.py)

Each engine section is a dataclass holding its keys and their defaults; an optional section a
modality adds (``map_core.modalities.register_folds``) is typed the same way, by the modality. An
experiment folder's ``config.yaml`` lists every value its run used. The class count is written once, as
``task.num_classes``; the model's ``num_classes`` / ``cls_dim`` follows it.

Experiment folder ``<exp-root>/<config stem>/<exp name>/``: ``config.yaml``, ``log.txt``,
``metrics.jsonl`` (``type``: train | epoch | test | vote | val), ``tb/``, ``last.pth``,
``best.pth``, ``epoch_XXXX.pth``.
"""
from map_core.engine.checkpoint import atomic_save, load_checkpoint, load_finetune_weights
from map_core.engine.tasks import ClassifyTask, LinearSVMTask, PretrainTask, Task
from map_core.engine.run import RunOptions, run
from map_core.engine.trainer import NonFiniteLossError, Trainer

__all__ = ["atomic_save", "load_checkpoint", "load_finetune_weights", "Task",
           "PretrainTask", "ClassifyTask", "LinearSVMTask", "Trainer", "RunOptions", "run",
           "NonFiniteLossError"]
