"""The modality-free training engine. Config layout (``map_core.engine.schema``, loaded by ``map_core.config``)::

    task: {NAME: pretrain}              # classify (num_classes, label_smoothing, mixup), linear_svm (C)
    model: {NAME: <registered model>, ...its keyword arguments}
    dataset: {train: {NAME: ..., ...}, val: {...}, test: {...}}
    optimizer: ...                      # OptimizerConfig
    scheduler: ...                      # SchedulerConfig
    train: {..., ema: ...}              # TrainConfig, EMAConfig
    runtime: {..., backends: ...}       # RuntimeConfig; backends: one key per registered op
    <section>: ...                      # optional: a fold protocol a modality registers
                                        # (schema.register_fold_protocol); one training per fold (run.py)

Each section is a dataclass of ``schema.py`` holding its keys, their defaults and their ranges; a
fold protocol's section is typed the same way, by its modality. An experiment folder's
``config.yaml`` lists every value its run used. The class count is written once, as
``task.num_classes``; the model's and the datasets' ``num_classes`` follow it.

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
