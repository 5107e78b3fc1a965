"""The modality-free training engine. Config layout (typed in ``map_core.config``)::

    task: {NAME: pretrain}              # classify (num_classes, label_smoothing, mixup), linear_svm (C)
    model: {NAME: <registered model>, ...its keyword arguments}
    dataset: {train: {NAME: ..., ...}, val: {...}, test: {...}}
    optimizer: {NAME: adamw, lr: 1.0e-3, weight_decay: 0.05, betas: [0.9, 0.999], eps: 1.0e-8,
                layer_decay: null, lr_batch_base: null}      # lr_batch_base 512: lr *= total_batch / 512
    scheduler: {NAME: cosine, epochs: 300, warmup_epochs: 10, min_lr: 1.0e-6, warmup_lr: 1.0e-6}
    train: {total_batch_size: 128, val_batch_size: null, accum_steps: 1, clip_grad: null,
            precision: auto, ema: {enable: false, decay: 0.9999, warmup: false}, num_workers: 4,
            log_every: 20, save_every: 0, val_every: 1, seed: 0, deterministic: false,
            max_steps_per_epoch: null}
    runtime: {find_unused_parameters: false, device: auto}
    fewshot: {way: 5, shot: 10, folds: 10}             # optional (pointcloud): one finetune per fold

``total_batch_size`` is over all ranks and accumulation steps. The schedule is stepped per
optimizer update. ``precision: auto`` is bf16 autocast on CUDA, fp32 on CPU.

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
