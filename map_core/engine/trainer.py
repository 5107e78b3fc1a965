"""The training loop: epochs of optimizer updates, AMP, accumulation, clipping, EMA, DDP, checkpoints.

``Trainer(cfg, exp_dir).fit()`` trains and returns the best metric; ``map_core.engine.run`` runs a
config as ``tools/train.py`` asks (train, folds, ``--test``, ``--vote``). Everything
modality-specific comes from the task (``map_core.engine.tasks``) and the datasets.
"""
from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from map_core import backends
from map_core.compile import compile_blocks
from map_core.config import config_diff, dump_config
from map_core.graphs import GraphedStep
from map_core.errors import ConfigError, UserError
from map_core.engine import checkpoint as ckpt_io
from map_core.engine.distributed import (DistInfo, ShardSampler, all_gather_objects, all_reduce_sum,
                                         barrier, init_distributed)
from map_core.engine.experiment import SAVED_CONFIG, check_same_optimizer, config_hint
from map_core.engine.logger import ExperimentLogger
from map_core.engine.optim import build_optimizer, build_scheduler, run_length
from map_core.engine.progress import Progress, ProgressFactory, format_eta
from map_core.engine.schema import ExperimentConfig, TrainConfig
from map_core.engine.tasks import Task, build_task, to_device
from map_core.registry import TASKS
from map_core.weights import extract_state_dict, load_exact

log = logging.getLogger(__name__)
progress_log = logging.getLogger("map_core.engine.progress")


class NonFiniteLossError(UserError):
    """The loss became NaN / inf; the message names the step and the last good checkpoint."""


@dataclass(frozen=True)
class StepPath:
    """How the training step runs, and why (logged once at the start)."""

    compile: bool
    cuda_graphs: bool
    why: str

    def describe(self) -> str:
        parts = (["compiled blocks"] if self.compile else []) + (["CUDA graphs"] if self.cuda_graphs else [])
        return f"training step: {' + '.join(parts) or 'eager'} ({self.why})"


def choose_step_path(train: TrainConfig, device: torch.device, world_size: int, capturable: bool) -> StepPath:
    """Resolve ``train.compile`` / ``train.cuda_graphs`` (each true, false or auto; compile also
    ``cuda``: compiled blocks inside the CUDA graphs, e.g. in the long-run recipes).

    ``auto`` gives the fastest correct step that does not pay a compilation up front: on one CUDA
    process, forward, loss and backward replayed from CUDA graphs (MAP 2D's per-step mask ratio gets
    one graph per mask count); under DDP, for a task whose step cannot be captured
    (``Task.capturable``) and on a CPU, the eager step. Compiled blocks run only inside graphs
    (``cuda``) or when asked for (true): launched one by one they were slower than the eager step
    on an H200 (MAP-Base 179 vs 146 ms, PointMAP 124 vs 116 ms: the step is bound by the host, and a
    compiled block's call costs the host more than the eager ops it replaces). An explicit true that
    cannot run is a ConfigError.
    """
    cuda, single = device.type == "cuda", world_size == 1
    if train.cuda_graphs is True:
        if not (cuda and single):
            raise ConfigError("train.cuda_graphs needs one process on a CUDA device (not CPU, not DDP); "
                              "use train.compile there")
        if not capturable:
            raise ConfigError("train.cuda_graphs: this task's step cannot be captured (it has data-dependent "
                              "shapes); use train.compile")
    graphs = train.cuda_graphs is True or (train.cuda_graphs == "auto" and cuda and single and capturable)
    compile_ = train.compile is True or (train.compile == "cuda" and graphs)
    if not cuda:
        why = "CPU" if {"auto", "cuda"} & {train.compile, train.cuda_graphs} else "as configured"
    elif train.cuda_graphs == "auto" and not graphs:
        why = "auto: " + ("several processes (DDP)" if not single else "this task's step cannot be captured")
        if train.compile == "cuda":
            why += "; compiled blocks run only inside graphs"
    else:
        why = "auto: one CUDA process" if "auto" in (train.compile, train.cuda_graphs) else "as configured"
    return StepPath(compile_, graphs, why)


def amp_settings(precision: str, device: torch.device) -> tuple:
    """(autocast dtype or None, use GradScaler) for ``train.precision``."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    table = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, True), "fp32": (None, False)}
    if precision not in table:
        raise ConfigError(f"train.precision: expected auto, bf16, fp16 or fp32, got '{precision}'")
    return table[precision]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Trainer:
    """Builds everything from the config (datasets first, so data errors come before step 1)."""

    def __init__(self, cfg: ExperimentConfig, exp_dir: Path, dist_info: Optional[DistInfo] = None,
                 progress: Optional[ProgressFactory] = None, splits: Optional[tuple] = None):
        self.cfg, self.exp_dir, self.progress = cfg, Path(exp_dir), progress
        self.dist = dist_info or init_distributed(cfg.runtime.device)
        seed_everything(cfg.train.seed + self.dist.rank, cfg.train.deterministic)
        try:
            backends.configure(cfg.runtime.backends, device=self.dist.device)
        except (ValueError, ImportError) as err:
            raise ConfigError(str(err)) from None
        self.task: Task = build_task(cfg)
        self.amp_dtype, use_scaler = amp_settings(cfg.train.precision, self.dist.device)
        self.task.bind(self.dist.device, self.amp_dtype)
        self.task.progress = progress if self.dist.is_main else None
        self.datasets: Dict[str, Dataset] = {s: self.task.build_dataset(s) for s in (splits or cfg.dataset)}
        self.model = self.task.build_model().to(self.dist.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.records = ExperimentLogger(self.exp_dir, self.dist.is_main)
        self.epoch, self.global_step = 0, 0
        self.best: Optional[float] = None
        self.last_saved: Optional[Path] = None
        self.ema: Optional[ModelEmaV3] = None

    # ------------------------------------------------------------------ setup
    def _per_rank_batch(self) -> int:
        train = self.cfg.train
        share = self.dist.world_size * train.accum_steps
        if train.total_batch_size < share or train.total_batch_size % share:
            raise ConfigError(f"train.total_batch_size={train.total_batch_size} must be a positive multiple of "
                              f"world size {self.dist.world_size} x accum_steps {train.accum_steps}")
        return train.total_batch_size // share

    def _loader(self, split: str, training: bool) -> DataLoader:
        dataset, train = self.datasets[split], self.cfg.train
        if training:
            sampler = DistributedSampler(dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                         shuffle=True, seed=train.seed, drop_last=True)
            batch = self._per_rank_batch()
        else:
            sampler = ShardSampler(len(dataset), self.dist.rank, self.dist.world_size)
            batch = train.val_batch_size or self._per_rank_batch()
        return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=train.num_workers,
                          pin_memory=self.dist.device.type == "cuda", drop_last=training,
                          worker_init_fn=_seed_worker, collate_fn=getattr(dataset, "collate_fn", None))

    def _setup_training(self, finetune: Optional[str], resume: Optional[Path], allow_partial: bool,
                        allow_changed: bool) -> None:
        train = self.cfg.train
        self.train_loader = self._loader("train", training=True)
        self.updates_per_epoch = len(self.train_loader) // train.accum_steps
        if train.max_steps_per_epoch:
            self.updates_per_epoch = min(self.updates_per_epoch, train.max_steps_per_epoch)
        if self.updates_per_epoch == 0:
            raise ConfigError(f"dataset.train has {len(self.datasets['train'])} samples: too few for one "
                              f"update of train.total_batch_size={train.total_batch_size}")
        self.total_updates, self.num_epochs = run_length(self.cfg.scheduler, self.updates_per_epoch)
        eval_split = next((s for s in ("val", "test") if s in self.datasets), None)
        self.eval_loader = self._loader(eval_split, training=False) if eval_split else None
        if finetune and not resume:
            ckpt_io.load_finetune_weights(self.model, finetune, allow_partial)
        self.optimizer = build_optimizer(self.model, self.cfg.optimizer, train.total_batch_size)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.scheduler, self.updates_per_epoch)
        if train.ema.enable:
            self.ema = ModelEmaV3(self.model, decay=train.ema.decay, use_warmup=train.ema.warmup)
        if resume:
            self._load_state(resume, allow_changed)
        self.records.rewind(self.global_step)
        self._save_config()
        self._session_start = (self.global_step, time.time())  # for the ETA
        self.ddp_model: nn.Module = self.model
        if self.dist.world_size > 1:
            ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self.cfg.runtime.find_unused_parameters)
        path = choose_step_path(train, self.dist.device, self.dist.world_size, self.task.capturable)
        log.info(path.describe())
        if path.compile:  # in place, block by block: checkpoints and evaluation are unaffected
            compile_blocks(self.model, train.compile_mode)
        self.graphed: Optional[GraphedStep] = None
        if path.cuda_graphs:
            self.graphed = GraphedStep(self.model, self.task.train_step, self.task.autocast)
        self.nonfinite = torch.zeros((), device=self.dist.device)  # non-finite updates since the last check
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.dist.device)

    # ------------------------------------------------------------------ checkpoints
    def _save_config(self) -> None:
        """``config.yaml``: every value this run uses (written once a resume has been accepted)."""
        if self.dist.is_main:
            dump_config(self.cfg, self.exp_dir / SAVED_CONFIG)

    def _state(self, metrics: Mapping[str, float], rng_states: list) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "config": self.cfg.to_dict(),
            "metrics": dict(metrics),
            "best_metric": self.best,
            "rng": rng_states,
        }

    def _save(self, metrics: Mapping[str, float], is_best: bool) -> None:
        rng_states = all_gather_objects(ckpt_io.rng_state())
        if self.dist.is_main:
            state = self._state(metrics, rng_states)
            names = ["last.pth"] + (["best.pth"] if is_best else [])
            every = self.cfg.train.save_every
            if every and self.epoch % every == 0:
                names.append(f"epoch_{self.epoch:04d}.pth")
            ckpt_io.atomic_save(state, self.exp_dir / names[0])
            for name in names[1:]:  # the same bytes: link or copy instead of serialising again
                ckpt_io.atomic_copy(self.exp_dir / names[0], self.exp_dir / name)
            log.info("saved %s (epoch %d)", ", ".join(names), self.epoch)
        self.last_saved = self.exp_dir / "last.pth"
        barrier()

    def _config_changes(self, saved: Any, path: Path, allow_changed: bool) -> List[str]:
        """The keys whose values differ from the config ``path`` was saved with (``key: old -> new``).
        Any is an error naming them, unless ``allow_changed`` (``--allow-changed-config``)."""
        changes = config_diff(saved, self.cfg.to_dict()) if isinstance(saved, Mapping) else []
        if changes and not allow_changed:
            raise ConfigError(f"--resume: the config differs from the one '{path}' was saved with "
                              f"(checkpoint -> now: {'; '.join(changes)}); resume with the checkpoint's values, "
                              f"or pass --allow-changed-config to continue with the new ones")
        if changes:
            log.warning("--allow-changed-config: resuming with new values (checkpoint -> now): %s", "; ".join(changes))
        return changes

    def _load_state(self, path: Path, allow_changed: bool) -> None:
        state = ckpt_io.load_checkpoint(path)
        changes = self._config_changes(state.get("config"), path, allow_changed)
        check_same_optimizer(state.get("config"), self.cfg, path)
        hint = config_hint(state.get("config"), self.cfg, "model", "Resume with the checkpoint's model settings, "
                           "or start a new run (--exp-name).")
        load_exact(self.model, state["model"], f"--resume checkpoint '{path}'", hint)
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # parameter groups changed (e.g. optimizer.layer_decay)
            raise ConfigError(f"--resume: the optimizer state in '{path}' does not fit this config ({err}); "
                              f"resume with the checkpoint's optimizer settings") from None
        if changes:  # the moments come from the checkpoint; decay, betas and the lr schedule from the config
            for group, own in zip(self.optimizer.param_groups, settings):
                group.update(own)
            self.scheduler.step_update(state["epoch"] * self.updates_per_epoch)
        else:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch, self.global_step, self.best = state["epoch"], state["global_step"], state["best_metric"]
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            ckpt_io.set_rng_state(rng[self.dist.rank])
        else:
            log.warning("checkpoint has RNG states for %d ranks, running %d: RNG not restored",
                        len(rng), self.dist.world_size)
        self.last_saved = path
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.global_step)

    # ------------------------------------------------------------------ loop
    def _check_finite(self) -> None:
        """Raise when an update since the last check met a non-finite loss or gradient (the
        update itself was skipped on the device). One host read, at log steps and epoch ends."""
        if self.nonfinite.item() > 0:
            last = str(self.last_saved) if self.last_saved else "none saved yet"
            raise NonFiniteLossError(
                f"non-finite loss or gradient at global step {int(self.first_nonfinite.item())} "
                f"(epoch {self.epoch + 1}); that update was skipped and training stopped; last good "
                f"checkpoint: {last}")

    def _optimizer_step(self, bad: torch.Tensor) -> None:
        """Step unless ``bad`` > 0, without reading ``bad`` on the host where the optimizer can
        skip on the device (fused AdamW / SGD take ``found_inf``, as under GradScaler)."""
        if self.scaler.is_enabled():  # the scaler skips steps whose gradients are not finite
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif getattr(self.optimizer, "_step_supports_amp_scaling", False) and self.optimizer.defaults.get("fused"):
            self.optimizer.grad_scale, self.optimizer.found_inf = None, (bad > 0).float()
            self.optimizer.step()
            del self.optimizer.grad_scale, self.optimizer.found_inf
        elif bad.item() == 0:
            self.optimizer.step()

    def _update(self, batches: list) -> Dict[str, Any]:
        """One optimizer update over ``accum_steps`` micro-batches; returns the logged values as
        device tensors (read on the host only at log steps)."""
        clip, accum, dev = self.cfg.train.clip_grad, len(batches), self.dist.device
        totals: Dict[str, Any] = {"loss": torch.zeros((), device=dev), "lr": self.optimizer.param_groups[0]["lr"]}
        bad = torch.zeros((), device=dev)
        for i, batch in enumerate(batches):
            batch = self.task.preprocess(to_device(batch, dev), training=True)
            if self.graphed is not None:  # forward, loss and backward replayed from a CUDA graph
                loss, info = self.graphed(batch, self.scaler.scale(torch.ones((), device=dev)) / accum)
            else:
                sync = i == accum - 1 or not isinstance(self.ddp_model, DistributedDataParallel)
                with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
                    with self.task.autocast():
                        loss, info = self.task.train_step(self.ddp_model, batch)
                    self.scaler.scale(loss / accum).backward()
            loss = loss.detach().float()
            bad += (~torch.isfinite(loss)).float()
            totals["loss"] += loss / accum
            for key, value in info.items():
                totals[key] = totals.get(key, 0.0) + value / accum
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            totals["grad_norm"] = nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            bad += (~torch.isfinite(totals["grad_norm"])).float()
        all_reduce_sum(bad)  # every rank skips the same updates
        self._optimizer_step(bad)
        self.optimizer.zero_grad(set_to_none=self.graphed is None)  # graphs accumulate into fixed tensors
        self.global_step += 1
        self.nonfinite += bad
        self.first_nonfinite = torch.where((self.first_nonfinite < 0) & (bad > 0), self.global_step,
                                           self.first_nonfinite)
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        return totals

    def _eta(self) -> str:
        """Time left for the run at the speed of this session's steps so far."""
        done, first_step, started = self.global_step, *self._session_start
        per_step = (time.time() - started) / max(done - first_step, 1)
        return format_eta(per_step * (self.total_updates - done))

    def _log_step(self, window: Dict[str, Any], count: int, samples: int, seconds: float) -> Dict[str, str]:
        """Write the mean of ``window`` over ``count`` updates; returns what the progress bar shows."""
        self._check_finite()
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.dist.device)
                              for v in window.values()]) / count
        values = all_reduce_sum(values) / self.dist.world_size
        record = dict(zip(window, values.tolist()))
        record.update(epoch=self.epoch + 1, samples_per_s=samples * self.dist.world_size / max(seconds, 1e-9))
        self.records.write("train", self.global_step, record)
        progress_log.info("epoch %d step %d/%d loss %.4f lr %.3e samples/s %.1f eta %s", self.epoch + 1,
                          self.global_step, self.total_updates,
                          record["loss"], record["lr"], record["samples_per_s"], self._eta())
        return {"epoch": str(self.epoch + 1), "loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}

    def train_epoch(self, bar: Optional[Progress] = None) -> float:
        """One epoch (each update reported to ``bar``); returns the mean training loss (this rank)."""
        self.ddp_model.train()
        self.train_loader.sampler.set_epoch(self.epoch)
        accum, log_every = self.cfg.train.accum_steps, self.cfg.train.log_every
        data, window, count, samples, start = iter(self.train_loader), {}, 0, 0, time.time()
        epoch_loss = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        updates = self.updates_per_epoch
        if self.cfg.scheduler.iterations is not None:  # the last epoch of an iteration-based run is cut short
            updates = min(updates, self.total_updates - self.global_step)
        for update in range(updates):
            batches = [next(data) for _ in range(accum)]
            values = self._update(batches)
            # the schedule's position counts epochs, so it is the same after a resume with another batch size
            self.scheduler.step_update(self.epoch * self.updates_per_epoch + update + 1)
            epoch_loss += values["loss"]
            window = {k: window.get(k, 0.0) + v for k, v in values.items()}
            count, samples = count + 1, samples + sum(len(b[0]) for b in batches)
            postfix = None
            if count == log_every or update == updates - 1:
                postfix = self._log_step(window, count, samples, time.time() - start)
                window, count, samples, start = {}, 0, 0, time.time()
            if bar is not None:
                bar.update(1, postfix)
        self._check_finite()
        return epoch_loss.item() / max(updates, 1)

    @staticmethod
    def metric_name(cfg: ExperimentConfig) -> str:
        return TASKS.get(cfg.task.NAME).metric

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.task.higher_is_better else value < self.best

    def fit(self, finetune: Optional[str] = None, resume: Optional[Path] = None,
            allow_partial: bool = False, allow_changed_config: bool = False) -> Dict[str, Any]:
        """Train to ``scheduler.epochs`` (or ``scheduler.iterations`` updates); returns {'best_metric',
        'metric', 'last_metrics'}.

        ``allow_partial`` accepts a ``finetune`` checkpoint that fills under half of the encoder;
        ``allow_changed_config`` a ``resume`` checkpoint saved with other config values.
        """
        if not self.task.trains:
            return self.fit_frozen(finetune, allow_partial)
        bar = None
        try:
            self._setup_training(finetune, resume, allow_partial, allow_changed_config)
            if self.progress and self.dist.is_main:
                bar = self.progress(self.total_updates, "train", initial=self.global_step)
            return self._fit(bar)
        finally:
            if bar is not None:
                bar.close()
            self.records.close()

    def _fit(self, bar: Optional[Progress]) -> Dict[str, Any]:
        train, epochs = self.cfg.train, self.num_epochs
        metrics: Dict[str, float] = {}
        log.info("training %d epochs of %d updates from epoch %d", epochs, self.updates_per_epoch, self.epoch)
        while self.epoch < epochs:
            train_loss = self.train_epoch(bar)
            self.epoch += 1
            metrics = {"train_loss": train_loss}
            is_best = False
            if self.eval_loader is not None and (self.epoch % train.val_every == 0 or self.epoch == epochs):
                metrics.update(self.task.evaluate(self.eval_model(), self.eval_loader))
                is_best = self._improved(metrics[self.task.metric])
                self.best = metrics[self.task.metric] if is_best else self.best
            self.records.write("epoch", self.global_step, {"epoch": self.epoch, **metrics, **self._dataset_summary(),
                                                           "best_" + self.task.metric: self.best})
            log.info("epoch %d: %s", self.epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            self._save(metrics, is_best)
        return {"best_metric": self.best, "metric": self.task.metric, "last_metrics": metrics}

    def _dataset_summary(self) -> Dict[str, Any]:
        """What the train dataset adds to the epoch record: its ``epoch_summary(epoch)`` (e.g. the
        image reader's count of unreadable files, with a warning), ``{}`` for datasets without one."""
        summary = getattr(self.datasets["train"], "epoch_summary", None)
        return dict(summary(self.epoch)) if summary is not None else {}

    def fit_frozen(self, finetune: Optional[str], allow_partial: bool = False) -> Dict[str, Any]:
        """Tasks without a training loop (linear SVM): fit on train, evaluate on test (or val)."""
        try:
            self._save_config()
            if finetune:
                ckpt_io.load_finetune_weights(self.model, finetune, allow_partial)
            self.task.fit(self.model, self._loader("train", training=False))
            split = "test" if "test" in self.datasets else "val"
            metrics = self.task.evaluate(self.model, self._loader(split, training=False))
            self.records.write(split, 0, metrics)
        finally:
            self.records.close()
        return {"best_metric": metrics[self.task.metric], "metric": self.task.metric, "last_metrics": metrics}

    def load_for_eval(self, path: Path) -> None:
        """Weights for --test / --vote: EMA weights when the config enables EMA and they were saved."""
        state = ckpt_io.load_checkpoint(path)
        if isinstance(state, Mapping) and self.cfg.train.ema.enable and state.get("ema") is not None:
            weights = {k: v for k, v in state["ema"].items()}
        else:
            weights = extract_state_dict(state, source=f"'{path}'")
        saved = state.get("config") if isinstance(state, Mapping) else None
        hint = config_hint(saved, self.cfg, "model", "Without --config, --test / --vote --ckpt use the "
                           "config.yaml saved beside the checkpoint.")
        load_exact(self.model, weights, f"'{path}'", hint)
        log.info("evaluating weights from %s", path)

    def test(self, vote: bool) -> Dict[str, float]:
        split = "test" if "test" in self.datasets else "val"
        loader = self._loader(split, training=False)
        metrics = self.task.vote(self.model, loader) if vote else self.task.evaluate(self.model, loader)
        self.records.write("vote" if vote else "test", 0, metrics)
        return metrics
