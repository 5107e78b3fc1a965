"""Optimizer and learning-rate schedule (config sections ``optimizer:`` and ``scheduler:``,
typed in ``map_core.engine.schema``).

Weight decay is off for parameters with ndim <= 1, for position / cls / mask / register tokens,
for the Mamba ``A_log`` / ``A_b_log`` / ``D`` / ``D_b`` parameters and for the model's own
``no_weight_decay()`` names. ``layer_decay`` uses timm's BEiT-style groups (``group_matcher``).
"""
from __future__ import annotations

import logging
from typing import List, Tuple

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

from map_core.engine.schema import OptimizerConfig, SchedulerConfig
from map_core.errors import ConfigError

log = logging.getLogger(__name__)

NO_DECAY_PATTERNS = (
    "*pos_embed*", "*cls_token*", "*mask_token*", "*register*",
    "A_log", "*.A_log", "A_b_log", "*.A_b_log", "D", "*.D", "D_b", "*.D_b",
)


def no_weight_decay_names(model: nn.Module) -> List[str]:
    """fnmatch patterns of parameters excluded from weight decay."""
    own = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return list(NO_DECAY_PATTERNS) + sorted(own)


def scaled_lr(opt_cfg: OptimizerConfig, total_batch_size: int) -> float:
    """``lr * total_batch_size / lr_batch_base`` when ``lr_batch_base`` is set, else ``lr``."""
    base = opt_cfg.lr_batch_base
    return opt_cfg.lr * total_batch_size / base if base else opt_cfg.lr


def build_optimizer(model: nn.Module, opt_cfg: OptimizerConfig, total_batch_size: int) -> torch.optim.Optimizer:
    """AdamW / SGD over weight-decay (and optional layer-decay) parameter groups."""
    lr = scaled_lr(opt_cfg, total_batch_size)
    skip = no_weight_decay_names(model)
    if opt_cfg.layer_decay is not None:
        groups = param_groups_layer_decay(model, weight_decay=opt_cfg.weight_decay,
                                          no_weight_decay_list=skip, layer_decay=opt_cfg.layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay=opt_cfg.weight_decay, no_weight_decay_list=skip)
    log.info("optimizer %s, lr %.3g (total batch %d), %d param groups", opt_cfg.NAME, lr, total_batch_size,
             len(groups))
    # fused: one kernel per step, and it can skip a non-finite update on the device (found_inf)
    fused = all(p.is_cuda for p in model.parameters())
    if opt_cfg.NAME == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=opt_cfg.betas, eps=opt_cfg.eps, fused=fused)
    if opt_cfg.NAME == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt_cfg.momentum, nesterov=True, fused=fused)
    raise ConfigError(f"optimizer.NAME: unknown optimizer '{opt_cfg.NAME}' (choose adamw or sgd)")


def run_length(sched_cfg: SchedulerConfig, updates_per_epoch: int) -> Tuple[int, int]:
    """(optimizer updates of the whole run, epochs it takes) for ``updates_per_epoch``."""
    if sched_cfg.iterations is None:
        return sched_cfg.epochs * updates_per_epoch, sched_cfg.epochs
    return sched_cfg.iterations, -(-sched_cfg.iterations // updates_per_epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: SchedulerConfig,
                    updates_per_epoch: int) -> Scheduler:
    """The ``scheduler.NAME`` schedule over the run (:func:`run_length`), stepped per optimizer
    update (``step_update``)."""
    total, _ = run_length(sched_cfg, updates_per_epoch)
    per_unit = 1 if sched_cfg.iterations is not None else updates_per_epoch
    warmup = sched_cfg.warmup_iterations if sched_cfg.iterations is not None else \
        int(sched_cfg.warmup_epochs * updates_per_epoch)
    common = dict(warmup_t=warmup, warmup_lr_init=sched_cfg.warmup_lr, t_in_epochs=False)
    if sched_cfg.NAME == "cosine":
        return CosineLRScheduler(optimizer, t_initial=max(1, total), lr_min=sched_cfg.min_lr, **common)
    if sched_cfg.NAME == "poly":
        if warmup >= total:
            raise ConfigError(f"scheduler: the warm-up ({warmup} updates) leaves nothing of the run ({total}) "
                              f"for the poly decay")
        return PolyLRScheduler(optimizer, t_initial=total - warmup, power=sched_cfg.power, lr_min=sched_cfg.min_lr,
                               warmup_prefix=True, **common)
    if sched_cfg.NAME == "step":
        milestones = [m * per_unit for m in sched_cfg.milestones]
        if milestones != sorted(milestones) or not all(0 < m < total for m in milestones):
            raise ConfigError(f"scheduler.milestones {list(sched_cfg.milestones)}: expected increasing values "
                              f"inside the run (1 .. {total // per_unit - 1})")
        # timm decays at t == milestone - 1; shifted so that, as detectron2's MultiStepLR, the
        # updates after the first ``milestone`` ones use the decayed lr (milestones count from the start)
        return MultiStepLRScheduler(optimizer, decay_t=[m + 1 for m in milestones], decay_rate=sched_cfg.decay_rate,
                                    warmup_prefix=False, **common)
    raise ConfigError(f"scheduler.NAME: unknown scheduler '{sched_cfg.NAME}' (choose cosine, poly or step)")
