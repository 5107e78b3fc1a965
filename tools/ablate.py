"""Run an ablation grid of ordinary ``tools/train.py`` jobs and write the result table and plot.

    python tools/ablate.py --grid configs/ablation/grid.yaml                   # every GPU, 2 jobs each
    python tools/ablate.py --grid configs/ablation/grid.yaml --gpus 0,1,2,3 --jobs-per-gpu 4
    python tools/ablate.py --grid configs/ablation/grid.yaml --dry-run         # jobs and time estimate
    python tools/ablate.py --grid configs/ablation/grid.yaml --report-only     # table + plot from results
    python tools/ablate.py --grid ... --doc docs/ablation.md --plot docs/ablation.png   # into the docs

The grid file (see ``configs/ablation/grid.yaml``) names, per modality, a pretraining config and the
evaluation configs (e.g. a low-label finetune and a linear SVM on frozen features), the seeds, and
``cells``: each entry expands to the product of its lists of axis values (``objective``,
``variant``, ``mask_ratio``, ...). ``axes`` says which ``--set`` overrides a value becomes in the
pretraining and in the evaluation jobs (a modality may replace an axis's entry); a modality's
``sets`` are added to every one of its jobs. ``objective: scratch`` has no pretraining: its
evaluations start from random weights.

For every (modality, cell, seed) one pretraining job runs, then each evaluation starts from its
``last.pth`` (``--finetune``). Jobs run in parallel: one process per slot, ``--jobs-per-gpu`` slots
on every visible GPU (or those of ``--gpus``; ``CUDA_VISIBLE_DEVICES`` set per process, each new job
on the GPU running the fewest), or ``--jobs`` CPU processes without a GPU. Each finished job
appends one JSON line to ``<out>/results.jsonl``; a second run skips the jobs listed there, so an
interrupted grid resumes (an unfinished job starts again from scratch). Ctrl-C or SIGTERM stops
the running jobs (each job's process group) and ends with one line. At the end (and with
``--report-only``) the table goes between the markers of ``--doc`` (default ``<out>/ablation.md``,
created if missing; text outside the markers is kept) and the plot to ``--plot`` (default
``<out>/ablation.png``); the repository's ``docs/`` are written only when named. A malformed grid
or argument ends with one 'error: ...' line and exit code 2. Installed, this is also the command
`map-ablate`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

try:
    from map_core.engine.console import USER_ERRORS, add_debug_flag, positive_int, report_error
    from map_core.engine.experiment import experiment_dir, remove_run
    from map_core.errors import ConfigError
except ModuleNotFoundError as err:  # a checkout that is not installed
    if err.name != "map_core":
        raise
    sys.exit("error: the map_core package is not installed; run `pip install -e .` in the repository root")

ROOT = Path(__file__).resolve().parents[1]  # grid and config paths are relative to the checkout
TRAIN = Path(__file__).with_name("train.py")  # what every job runs
BEGIN, END = "<!-- ablate:begin -->", "<!-- ablate:end -->"
SCRATCH = "scratch"
PRETRAIN = "pretrain"
KINDS = (PRETRAIN, "evaluate")  # the job kinds that ``sets`` and ``axes`` give overrides to
LOG_NAME = "ablate_job.log"  # a job's command line and output, in its experiment folder
STOP_SECONDS = 10.0  # how long stopped jobs get to end after SIGTERM before SIGKILL


class GridError(ConfigError):
    """The grid file is malformed; the message names the file and the key."""


class Interrupted(Exception):
    """SIGTERM or SIGINT (``signum``) reached this process; ``stopped`` running jobs were ended."""

    def __init__(self, signum: int, stopped: int = 0):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.stopped = signum, stopped


# ----------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Cell:
    """One point of the grid: axis name -> value, ``objective`` first, then in the order of ``axes``."""

    values: Tuple[Tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values)

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.values).get(key, default)


@dataclass
class Job:
    """One ``tools/train.py`` run. ``after``: the pretraining job it starts from (or None)."""

    id: str
    modality: str
    cell: Cell
    seed: int
    kind: str  # "pretrain" or an evaluation name
    config: str
    sets: List[str]
    exp_root: Path
    after: Optional[str] = None
    steps: int = 0  # optimizer updates (for the time estimate)

    @property
    def exp_dir(self) -> Path:
        return experiment_dir(self.config, self.exp_root, self.kind)

    def argv(self, checkpoint: Optional[Path]) -> List[str]:
        args = ["--config", self.config, "--exp-root", str(self.exp_root), "--exp-name", self.kind,
                "--seed", str(self.seed)]
        if checkpoint is not None:
            args += ["--finetune", str(checkpoint)]
        return args + (["--set", *self.sets] if self.sets else [])


@dataclass
class Grid:
    path: Path
    seeds: List[int]
    modalities: Dict[str, Dict[str, Any]]
    cells: List[Cell]
    axes: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)


def _typed(value: Any, kind: type, expected: str, where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GridError(f"{where}: expected {expected}, got {value!r}")
    return value


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise GridError(f"{where}: missing key '{key}'")
    return mapping[key]


def _templates(value: Any, where: str) -> List[str]:
    """A list of ``--set`` templates (``{}`` stands for the cell's value), each checked to format."""
    for i, template in enumerate(_typed(value, list, "a list of KEY=VALUE strings", where)):
        _typed(template, str, "a KEY=VALUE string", f"{where}[{i}]")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as err:
            raise GridError(f"{where}[{i}]: '{template}' is not a template with one {{}} ({err})") from None
    return value


def _overrides(value: Any, where: str) -> Dict[str, List[str]]:
    """``{pretrain: [...], evaluate: [...]}`` (either may be left out)."""
    for kind, templates in _typed(value or {}, Mapping, f"a mapping with keys {' / '.join(KINDS)}", where).items():
        if kind not in KINDS:
            raise GridError(f"{where}.{kind}: unknown job kind (expected {' or '.join(KINDS)})")
        _templates(templates, f"{where}.{kind}")
    return dict(value or {})


def _check_modality(spec: Any, where: str) -> None:
    _typed(spec, Mapping, "a mapping with 'pretrain' and 'evaluate'", where)
    evaluate = _typed(_require(spec, "evaluate", where), Mapping, "a mapping of evaluation name -> config",
                      f"{where}.evaluate")
    if not evaluate:
        raise GridError(f"{where}.evaluate: name at least one evaluation config")
    configs = {f"{where}.pretrain": _require(spec, PRETRAIN, where),
               **{f"{where}.evaluate.{name}": config for name, config in evaluate.items()}}
    for key, config in configs.items():
        if not isinstance(config, str) or not ((ROOT / config).is_file() or Path(config).is_file()):
            raise GridError(f"{key}: config '{config}' not found")
    _overrides(spec.get("sets"), f"{where}.sets")
    for axis, overrides in _typed(spec.get("axes") or {}, Mapping, "a mapping", f"{where}.axes").items():
        _overrides(overrides, f"{where}.axes.{axis}")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (see ``configs/ablation/grid.yaml``); GridError names the key at fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise GridError(f"{path}: not a readable YAML file ({err})") from None
    data = _typed(data, Mapping, "a mapping with seeds, modalities and cells", str(path))
    seeds = _typed(_require(data, "seeds", str(path)), list, "a list of integer seeds, e.g. [0, 1, 2]",
                   f"{path}: seeds")
    for i, seed in enumerate(seeds):
        _typed(seed, int, "an integer seed", f"{path}: seeds[{i}]")
    modalities = _typed(_require(data, "modalities", str(path)), Mapping,
                        "a mapping of modality name -> its configs", f"{path}: modalities")
    axes = _typed(data.get("axes") or {}, Mapping, "a mapping of axis name -> overrides", f"{path}: axes")
    for axis, overrides in axes.items():
        _overrides(overrides, f"{path}: axes.{axis}")
    for name, spec in modalities.items():
        _check_modality(spec, f"{path}: modalities.{name}")
    cells: List[Cell] = []
    entries = _typed(_require(data, "cells", str(path)), list, "a list of cells", f"{path}: cells")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "objective" not in entry:
            raise GridError(f"{path}: cells[{i}] must be a mapping with at least 'objective'")
        for key in entry:
            if key != "objective" and key not in axes:
                raise GridError(f"{path}: cells[{i}].{key} has no entry in 'axes' (known: {', '.join(axes)})")
        order = ["objective", *axes]  # one order, whatever the entry's: equal cells compare equal
        lists = [(k, entry[k] if isinstance(entry[k], list) else [entry[k]]) for k in order if k in entry]
        for combo in itertools.product(*(values for _, values in lists)):
            cell = Cell(tuple(zip((k for k, _ in lists), combo)))
            if cell not in cells:
                cells.append(cell)
    return Grid(path, list(seeds), dict(modalities), cells, dict(axes))


def cell_sets(grid: Grid, modality: str, cell: Cell, kind: str) -> List[str]:
    """``--set`` overrides of a job of ``kind`` ("pretrain" or "evaluate"): the modality's own
    ``sets`` for that kind, then those of the cell's axis values."""
    sets = list((grid.modalities[modality].get("sets") or {}).get(kind, []))
    for key, value in cell.values:
        if key == "objective":
            if kind == PRETRAIN:
                sets.append(f"model.objective={value}")
            continue
        spec = (grid.modalities[modality].get("axes") or {}).get(key, grid.axes[key])
        sets += [template.format(value) for template in spec.get(kind, [])]
    return sets


def expand(grid: Grid, out: Path, extra_sets: Sequence[str] = ()) -> List[Job]:
    """Every job of the grid, each pretraining job before the evaluations that start from it;
    ``extra_sets`` (``--set`` of this tool) are added to every job."""
    jobs: List[Job] = []
    for modality, spec in grid.modalities.items():
        for cell in grid.cells:
            slug = cell.name.replace("=", "-").replace(",", "_")
            for seed in grid.seeds:
                root = out / "runs" / modality / slug / f"seed{seed}"
                base = f"{modality}/{cell.name}/seed{seed}"
                pre = None
                if cell.get("objective") != SCRATCH:
                    pre = f"{base}/{PRETRAIN}"
                    jobs.append(Job(pre, modality, cell, seed, PRETRAIN, spec[PRETRAIN],
                                    cell_sets(grid, modality, cell, PRETRAIN) + list(extra_sets), root))
                for name, config in spec["evaluate"].items():
                    jobs.append(Job(f"{base}/{name}", modality, cell, seed, name, config,
                                    cell_sets(grid, modality, cell, "evaluate") + list(extra_sets), root,
                                    after=pre))
    return jobs


# ----------------------------------------------------------------------------- results
def read_results(path: Path) -> Dict[str, Dict[str, Any]]:
    """job id -> its record, from ``results.jsonl`` (a torn last line from a crash is ignored)."""
    records: Dict[str, Dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            records[record["job"]] = record
    return records


def append_result(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def job_metrics(output: str) -> Dict[str, Any]:
    """The metrics JSON that ``tools/train.py`` prints as its last line (of ``output``)."""
    for line in reversed(output.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "metric" in value:
            return value
    raise ValueError("no metrics line in the job's output")


# ----------------------------------------------------------------------------- running
@dataclass
class Slot:
    name: str  # "cuda:0" or "cpu"
    device: str  # what runs the job, e.g. "NVIDIA H100 80GB HBM3" or "x86_64 CPU, 16 cores"
    env: Dict[str, str]


def make_slots(gpus: Sequence[str], jobs_per_gpu: int, cpu_jobs: int) -> List[Slot]:
    """One slot per concurrent job: ``jobs_per_gpu`` per GPU id in ``gpus`` (as ``CUDA_VISIBLE_DEVICES``
    names them), or ``cpu_jobs`` CPU slots when ``gpus`` is empty. Threads per process = CPU
    cores / slots."""
    count = len(gpus) * jobs_per_gpu if gpus else cpu_jobs
    threads = str(max(1, (os.cpu_count() or 1) // count))
    base = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if not gpus:
        cpu = f"{platform.machine()} CPU, {os.cpu_count()} cores"
        return [Slot("cpu", cpu, {**base, "CUDA_VISIBLE_DEVICES": ""}) for _ in range(cpu_jobs)]
    import torch

    names = {g: torch.cuda.get_device_name(i) for i, g in enumerate(visible_gpus())}
    return [Slot(f"cuda:{g}", names.get(g, f"GPU {g}"), {**base, "CUDA_VISIBLE_DEVICES": g})
            for g in gpus for _ in range(jobs_per_gpu)]


def visible_gpus() -> List[str]:
    """The ids of every GPU this process sees, as a child's ``CUDA_VISIBLE_DEVICES`` names them (the
    entries of this process's own ``CUDA_VISIBLE_DEVICES`` when it is set); [] without a GPU."""
    import torch

    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


class Runner:
    """Runs the jobs that are not in the results yet, ``len(slots)`` at a time, and prints progress.

    Each job is a process group of its own, so that stopping the grid (:meth:`stop`, on Ctrl-C or
    SIGTERM) ends every process a job started.
    """

    def __init__(self, jobs: List[Job], slots: List[Slot], results: Path, command: str = ""):
        self.jobs, self.slots, self.results_path, self.command = jobs, slots, results, command
        self.done = read_results(results)
        self.failed: Dict[str, str] = {}
        self.running: Dict[int, Tuple[Job, subprocess.Popen, Any, float]] = {}  # slot index -> job
        self.rerun = self._lost_checkpoints()

    def _lost_checkpoints(self) -> List[str]:
        """Finished pretrainings whose checkpoint is gone (results copied to another machine, runs
        deleted) while a job that starts from it still has to run: they run again."""
        lost = sorted({job.after for job in self.jobs if job.id not in self.done and job.after in self.done
                       and not Path(self.done[job.after]["checkpoint"]).is_file()})
        for job_id in lost:
            del self.done[job_id]
        return lost

    def _ready(self, job: Job) -> bool:
        return job.after is None or job.after in self.done

    def _blocked(self, job: Job) -> bool:
        return job.after is not None and job.after in self.failed

    def command_of(self, job: Job) -> List[str]:
        """The command line of ``job``: ``tools/train.py`` with its arguments."""
        checkpoint = Path(self.done[job.after]["checkpoint"]) if job.after is not None else None
        return [sys.executable, str(TRAIN), *job.argv(checkpoint)]

    def _free_slot(self) -> Optional[int]:
        """A free slot on the device that runs the fewest jobs now (the lowest index among equals)."""
        busy: Dict[str, int] = {}
        for i in self.running:
            busy[self.slots[i].name] = busy.get(self.slots[i].name, 0) + 1
        free = [i for i in range(len(self.slots)) if i not in self.running]
        return min(free, key=lambda i: (busy.get(self.slots[i].name, 0), i)) if free else None

    def _start(self, job: Job, slot: Slot) -> Tuple[subprocess.Popen, Any, float]:
        remove_run(job.exp_dir)  # what a previous, unfinished attempt wrote
        job.exp_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command_of(job)
        log = open(job.exp_dir / LOG_NAME, "w")
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **slot.env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        return proc, log, time.time()

    def stop(self) -> int:
        """End every running job's process group (SIGTERM, SIGKILL after ``STOP_SECONDS``); returns
        how many jobs were running."""
        jobs = list(self.running.values())
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for _, proc, _, _ in jobs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signum)
            deadline = time.time() + STOP_SECONDS
            for _, proc, _, _ in jobs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.time()))
        for _, _, log, _ in jobs:
            log.close()
        self.running.clear()
        return len(jobs)

    def run(self) -> int:
        """Run every job; 0 when all succeeded, 1 when some failed. On Ctrl-C or SIGTERM the running
        jobs are stopped and Interrupted says how many."""
        try:
            return self._run()
        except (KeyboardInterrupt, Interrupted) as stop:
            raise Interrupted(getattr(stop, "signum", signal.SIGINT), self.stop()) from None

    def _run(self) -> int:
        todo = [j for j in self.jobs if j.id not in self.done]
        total, finished = len(self.jobs), len(self.jobs) - len(todo)
        self._print(f"{finished} of {total} jobs already done; {len(todo)} to run on {len(self.slots)} "
                    f"slot(s) ({', '.join(sorted({s.name for s in self.slots}))})")
        for job_id in self.rerun:
            self._print(f"again {job_id}: its checkpoint is gone and a job still starts from it")
        durations: List[float] = []
        while todo or self.running:
            for job in [j for j in todo if self._blocked(j)]:
                todo.remove(job)
                self.failed[job.id] = f"skipped: {job.after} failed"
                self._print(f"skip  {job.id} ({job.after} failed)")
            while (i := self._free_slot()) is not None:
                job = next((j for j in todo if self._ready(j)), None)
                if job is None:
                    break
                todo.remove(job)
                self.running[i] = (job, *self._start(job, self.slots[i]))
            time.sleep(0.2)
            for i, (job, proc, log, start) in list(self.running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del self.running[i]
                seconds = time.time() - start
                finished += 1
                if proc.returncode != 0:
                    self.failed[job.id] = f"exit code {proc.returncode}, see {job.exp_dir / LOG_NAME}"
                    self._print(f"[{finished}/{total}] FAIL {job.id}: {self.failed[job.id]}")
                    continue
                record = self._record(job, self.slots[i], (job.exp_dir / LOG_NAME).read_text(errors="replace"),
                                      seconds)
                append_result(self.results_path, record)
                self.done[job.id] = record
                durations.append(seconds)
                eta = np.mean(durations) * (len(todo) + len(self.running)) / len(self.slots) / 60
                self._print(f"[{finished}/{total}] ok   {job.id}: {record['metric']} {record['value']:.4g} "
                            f"({seconds:.0f} s; {len(self.running)} running, ~{eta:.1f} min left)")
        if self.failed:
            self._print(f"{len(self.failed)} job(s) failed or were skipped:")
            for job_id, why in self.failed.items():
                self._print(f"  {job_id}: {why}")
        return 1 if self.failed else 0

    def _record(self, job: Job, slot: Slot, stdout: str, seconds: float) -> Dict[str, Any]:
        metrics = job_metrics(stdout)
        name = metrics["metric"]
        last = metrics.get("last_metrics") or {}
        value = last.get(name, metrics.get("best_metric"))
        return {"job": job.id, "modality": job.modality, "cell": dict(job.cell.values), "seed": job.seed,
                "kind": job.kind, "metric": name, "value": value, "seconds": seconds, "finished": time.time(),
                "device": f"{slot.device} ({slot.name})",
                "checkpoint": str(job.exp_dir / "last.pth"), "ablate": self.command,
                "command": "python tools/train.py " + shlex.join(self.command_of(job)[2:])}

    def _print(self, text: str) -> None:
        print(f"{datetime.datetime.now():%H:%M:%S} {text}", flush=True)


# ----------------------------------------------------------------------------- estimates
def count_steps(job: Job) -> int:
    """Optimizer updates of ``job`` (0 for tasks without training, e.g. the linear SVM)."""
    from map_core.engine.schema import load_experiment
    from map_core.engine.tasks import build_task

    cfg = load_experiment(job.config, job.sets)
    task = build_task(cfg)
    if not task.trains:
        return 0
    per_epoch = len(task.build_dataset("train")) // cfg.train.total_batch_size
    if cfg.train.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.train.max_steps_per_epoch)
    return per_epoch * cfg.scheduler.epochs


def estimate(jobs: List[Job], sec_per_step: float, sec_per_job: float, slots: int) -> str:
    """A few lines: jobs and updates per kind, serial device-seconds and wall time over ``slots``."""
    from map_core.modalities import load_modalities

    load_modalities()  # every modality's models and datasets, for counting the updates

    cache: Dict[Tuple[str, Tuple[str, ...]], int] = {}
    by_kind: Dict[str, List[int]] = {}
    for job in jobs:
        key = (job.config, tuple(s for s in job.sets if not s.startswith(("model.", "train.seed"))))
        if key not in cache:
            try:
                cache[key] = count_steps(job)
            except USER_ERRORS as err:
                raise ConfigError(f"job {job.id} ({job.config} --set {' '.join(job.sets)}): {err}") from None
        job.steps = cache[key]
        by_kind.setdefault(f"{job.modality} {job.kind}", []).append(job.steps)
    lines = [f"{'jobs':>6} {'updates each':>13}  kind"]
    for kind, steps in by_kind.items():
        lines.append(f"{len(steps):>6} {int(np.mean(steps)):>13}  {kind}")
    total_steps = sum(j.steps for j in jobs)
    serial = total_steps * sec_per_step + len(jobs) * sec_per_job
    lines.append(f"{len(jobs)} jobs, {total_steps} updates: {serial / 60:.0f} device-minutes at "
                 f"{sec_per_step} s/update + {sec_per_job} s/job; over {slots} slot(s) about "
                 f"{serial / 60 / slots:.0f} minutes if jobs sharing a GPU do not slow each other")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def summarise(records: Sequence[Mapping[str, Any]]) -> Dict[Tuple[str, str, str], Tuple[float, float, int]]:
    """(modality, cell name, kind) -> (mean, std over seeds, number of seeds)."""
    groups: Dict[Tuple[str, str, str], List[float]] = {}
    for r in records:
        name = Cell(tuple(r["cell"].items())).name
        groups.setdefault((r["modality"], name, r["kind"]), []).append(float(r["value"]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def _fmt(stat: Optional[Tuple[float, float, int]], digits: int) -> str:
    if stat is None:
        return "-"
    mean, std, n = stat
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"


def report_markdown(grid: Grid, records: Sequence[Mapping[str, Any]], meta: Mapping[str, str]) -> str:
    """Tables of mean ± std (number of seeds) per modality, evaluation and cell."""
    stats = summarise(records)
    lines = [f"Generated by {meta['command']} on {meta['date']}; device: {meta['device']}; "
             f"{meta['jobs']} jobs, {meta['job_minutes']} job-minutes, {meta['wall']} wall time. "
             f"Seeds {', '.join(map(str, grid.seeds))}; mean ± sample std (number of seeds).", ""]
    for modality, spec in grid.modalities.items():
        kinds = list(spec["evaluate"]) + [PRETRAIN]
        for kind in kinds:
            unit = next((r["metric"] for r in records if r["modality"] == modality and r["kind"] == kind), "")
            title = (f"pretraining: final validation {unit} (lower is better)" if kind == PRETRAIN else
                     f"{kind} ({spec['evaluate'][kind]}): {unit}")
            lines += [f"### {modality}: {title}", ""]
            extra = sorted({k for c in grid.cells for k, _ in c.values} - {"objective", "variant"})
            header = ["objective", "variant", *extra]
            lines += ["| " + " | ".join(header + ["result"]) + " |", "|" + " --- |" * (len(header) + 1)]
            for cell in grid.cells:
                if kind == PRETRAIN and cell.get("objective") == SCRATCH:
                    continue
                row = [str(cell.get(k, "")) for k in header]
                lines.append("| " + " | ".join(row + [_fmt(stats.get((modality, cell.name, kind)),
                                                          4 if kind == PRETRAIN else 1)]) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(grid: Grid, records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Bars of mean accuracy with std error bars: one panel per modality and evaluation; bars grouped
    by variant, one colour per objective; cells with other axes (mask ratio) as their own groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarise(records)
    panels = [(m, k) for m, spec in grid.modalities.items() for k in spec["evaluate"]]
    objectives = list(dict.fromkeys(c.get("objective") for c in grid.cells))
    rest = {c: ", ".join(f"{k}={v}" for k, v in c.values if k != "objective") for c in grid.cells}
    groups = list(dict.fromkeys(rest.values()))
    width = 0.8 / len(objectives)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.9 * len(groups) + 2), 3.2 * len(panels)),
                             squeeze=False)
    for ax, (modality, kind) in zip(axes[:, 0], panels):
        for i, objective in enumerate(objectives):
            bars = [(g, stats[(modality, c.name, kind)]) for c in grid.cells for g, group in enumerate(groups)
                    if c.get("objective") == objective and rest[c] == group and (modality, c.name, kind) in stats]
            if bars:
                xs = [g + (i - (len(objectives) - 1) / 2) * width for g, _ in bars]
                ax.bar(xs, [s[0] for _, s in bars], width, yerr=[s[1] for _, s in bars], capsize=2, label=objective)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.replace(", ", "\n") for g in groups], fontsize=7)
        unit = next((r["metric"] for r in records if r["modality"] == modality and r["kind"] == kind), "")
        ax.set_ylabel(unit)
        ax.set_title(f"{modality}: {kind}", fontsize=9)
        ax.legend(fontsize=7, ncol=len(objectives))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_doc(path: Path, table: str, picture: Optional[Path]) -> None:
    """Put ``table`` (and the picture link) between the markers of ``path``; keep the rest."""
    body = table + (f"\n![ablation results]({os.path.relpath(picture, path.parent)})\n" if picture else "")
    block = f"{BEGIN}\n{body}\n{END}"
    text = path.read_text() if path.exists() else f"# Ablation\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise GridError(f"{path}: no '{BEGIN}' ... '{END}' markers to write the table between")
    head, rest = text.split(BEGIN, 1)
    text = head + block + rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def busy_seconds(records: Sequence[Mapping[str, Any]]) -> float:
    """Seconds during which at least one job ran (the union of the jobs' intervals), so that a grid
    finished in several sittings does not count the pauses between them as wall time."""
    total, end = 0.0, float("-inf")
    for start, finish in sorted((r["finished"] - r["seconds"], r["finished"]) for r in records):
        total += max(0.0, finish - max(start, end))
        end = max(end, finish)
    return total


# ----------------------------------------------------------------------------- main
def seed_list(text: str) -> List[int]:
    """argparse type of ``--seeds``: comma-separated integers."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds (e.g. 0,1,2), got {text!r}") \
            from None


def gpu_list(text: str) -> List[str]:
    """argparse type of ``--gpus``: comma-separated GPU ids ('' for none)."""
    return [g.strip() for g in text.split(",") if g.strip()]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, help="grid YAML (see configs/ablation/grid.yaml)")
    p.add_argument("--out", default="experiments/ablation", help="runs, results.jsonl and the report go here")
    p.add_argument("--gpus", default=None, type=gpu_list,
                   help="comma-separated GPU ids (default: every visible GPU; '' = CPU only)")
    p.add_argument("--jobs-per-gpu", type=positive_int, default=2, help="concurrent jobs on each GPU")
    p.add_argument("--jobs", type=positive_int, default=1, help="concurrent jobs when there is no GPU")
    p.add_argument("--seeds", default=None, type=seed_list, help="comma-separated seeds instead of the grid's")
    p.add_argument("--doc", default=None, help="markdown file the table is written into (default: <out>/ablation.md)")
    p.add_argument("--plot", default=None, help="PNG of the results (default: <out>/ablation.png)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides added to every job (e.g. train.cuda_graphs=true on GPUs)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and estimate the device time")
    p.add_argument("--report-only", action="store_true", help="only write the table and the plot")
    p.add_argument("--sec-per-step", type=float, default=0.1,
                   help="for the estimate: seconds per update (the demo: ~0.1 on one H100)")
    p.add_argument("--sec-per-job", type=float, default=5.0, help="for the estimate: start-up seconds per job")
    add_debug_flag(p)
    return p.parse_args(argv)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def run_grid(args: argparse.Namespace, command: str) -> int:
    """Dry run, or run the grid's jobs and write the report; returns the exit code."""
    grid = load_grid(args.grid)
    if args.seeds:
        grid.seeds = args.seeds
    out = Path(args.out)
    jobs = expand(grid, out.resolve(), args.set)
    slots = make_slots(visible_gpus() if args.gpus is None else args.gpus, args.jobs_per_gpu, args.jobs)
    if args.dry_run:
        for job in jobs:
            checkpoint = Path(f"<{job.after}>/last.pth") if job.after else None
            print(f"{job.id}: python tools/train.py {shlex.join(job.argv(checkpoint))}")
        print(estimate(jobs, args.sec_per_step, args.sec_per_job, len(slots)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    code = 0 if args.report_only else Runner(jobs, slots, results, command).run()
    ids = {j.id for j in jobs}
    records = [r for r in read_results(results).values() if r["job"] in ids]
    ran_by = sorted({r["ablate"] for r in records if r.get("ablate")}) or [command]
    meta = {"command": " and ".join(f"`{c}`" for c in ran_by)
                       + ("" if ran_by == [command] else f" (table: `{command}`)"),
            "date": f"{datetime.date.today():%Y-%m-%d}",
            "device": ", ".join(sorted({r["device"].split(" (")[0] for r in records})) or "-",
            "jobs": str(len(records)),
            "job_minutes": f"{sum(r['seconds'] for r in records) / 60:.1f}",
            "wall": f"{busy_seconds(records) / 60:.1f} minutes"}
    doc = Path(args.doc) if args.doc else out / "ablation.md"
    picture = (Path(args.plot) if args.plot else out / "ablation.png") if records else None
    if picture is not None:
        plot(grid, records, picture)
    write_doc(doc, report_markdown(grid, records, meta), picture)
    print(f"wrote {doc}" + (f" and {picture}" if picture else ""))
    return code


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    command = "python tools/ablate.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return run_grid(args, command)
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    except (KeyboardInterrupt, Interrupted) as stop:
        stop = stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)
        print(f"interrupted by {stop}: stopped {stop.stopped} running job(s); the same command continues "
              f"the grid", file=sys.stderr)
        return 128 + stop.signum
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
