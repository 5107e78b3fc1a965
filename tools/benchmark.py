"""Training-step benchmark: time, throughput, memory and model-FLOP utilisation of one step.

    # one model: forward + backward + AdamW step
    python tools/benchmark.py --model map_tiny_patch16_224 --batch 64 --input image:224 [--compile]
    python tools/benchmark.py --model pointmap_pretrain --batch 128 --input points:1024 --scan torch
    # --input defaults to the model's modality (map_core.modalities) at its default size
    # the whole comparison of BENCHMARKS.md: MAP sizes, PointMAP, a timm MAE ViT-B step, scaling,
    # each eager, with torch.compile (--compile) or replayed from CUDA graphs (--cuda-graphs)
    python tools/benchmark.py --suite
    # the kernels against their references and their floors: tools/benchmark_kernels.py, also run by
    python tools/benchmark.py --kernels [--sweep]

Prints one JSON line per measurement. ``model_flop_per_step`` counts the matmul/conv/attention FLOPs of
one step (forward + backward, at the mean mask ratio) with ``torch.utils.flop_counter.FlopCounterMode``; ``mfu`` divides
the achieved rate by the device's dense bf16 peak (H100 / H200 SXM: 989 TFLOP/s, datasheet).
The step times are CUDA-event medians after warm-up. Results worth keeping go to BENCHMARKS.md.
One function per measured thing (``bench_step``; ``profile_step``, ``step_flops``), the suite as a
table (``SUITE``). An unknown model, key or backend, or sizes the model refuses, end with one
'error: ...' line and exit code 2 (``--debug`` shows the traceback). Installed, this is also the
command `map-benchmark`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import yaml

try:
    from map_core import backends
    from map_core.compile import compile_blocks
    from map_core.engine.console import USER_ERRORS, add_debug_flag, positive_int, report_error
    from map_core.errors import ConfigError
    from map_core.graphs import GraphedStep
    from map_core.modalities import get_modality, load_modalities, modality_of
    from map_core.registry import MODELS, check_kwargs
except ModuleNotFoundError as err:  # a checkout that is not installed
    if err.name != "map_core":
        raise
    sys.exit("error: the map_core package is not installed; run `pip install -e .` in the repository root")

KERNELS = Path(__file__).with_name("benchmark_kernels.py")  # what --kernels runs
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


class MAEViTBase(nn.Module):
    """The baseline a user would pick instead: MAE with a ViT-B/16 encoder built from timm blocks,
    75% random masking, an 8-block 512-wide decoder and the norm-pix loss on masked patches."""

    modality = "image"

    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 dec_dim: int = 512, dec_depth: int = 8, dec_heads: int = 16, mask_ratio: float = 0.75):
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        self.patch, self.mask_ratio = patch, mask_ratio
        self.patch_embed = PatchEmbed(img_size, patch, 3, dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, n + 1, dec_dim) * 0.02)
        self.decoder_blocks = nn.ModuleList(Block(dec_dim, dec_heads, 4.0, qkv_bias=True) for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch * patch * 3)

    def forward(self, imgs: torch.Tensor):
        b = imgs.shape[0]
        p = self.patch
        target = imgs.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(b, -1, p * p * 3)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        n = x.shape[1]
        keep_n = int(n * (1 - self.mask_ratio))
        order = torch.rand(b, n, device=x.device).argsort(1)
        restore = order.argsort(1)
        x = torch.gather(x, 1, order[:, :keep_n, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        seq = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep_n, -1)], 1)
        seq = torch.gather(seq, 1, restore[..., None].expand(-1, -1, seq.shape[-1]))
        x = torch.cat([x[:, :1], seq], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        masked = (restore >= keep_n).float()
        loss = (((pred.float() - target) ** 2).mean(-1) * masked).sum() / masked.sum()
        return loss, pred, masked


BASELINES = {"mae_vit_base": MAEViTBase}  # models to compare against, not in the registry


def build_model(name: str, kwargs: Optional[dict] = None) -> nn.Module:
    """The registered model ``name`` (or a baseline); an unknown name or key, or sizes the model
    refuses, is a ConfigError."""
    kwargs = kwargs or {}
    if name in BASELINES:
        return BASELINES[name](**kwargs)
    try:
        builder = MODELS.get(name)
        check_kwargs(builder, kwargs, f"--set of model '{name}'")
        return builder(**kwargs)
    except KeyError as err:  # the registry's message: unknown name or key (sized factories check theirs)
        raise ConfigError(err.args[0]) from None
    except ValueError as err:
        raise ConfigError(f"model '{name}' with {kwargs}: {err}") from None


def input_spec(text: str) -> str:
    """argparse type of ``--input``: ``MODALITY:SIZE``, e.g. ``image:224`` or ``points:1024``."""
    kind, _, size = text.partition(":")
    if not kind or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected MODALITY:SIZE (e.g. image:224, points:1024), got {text!r}")
    return text


def default_input(model: str) -> str:
    """``MODALITY:SIZE`` of the model's modality at its default size."""
    modality = modality_of(BASELINES.get(model, model))
    return f"{modality.name}:{modality.default_size}"


def key_value(text: str) -> tuple:
    """argparse type of ``--set``: ``key=value`` with a YAML value."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def make_input(spec: str, batch: int, device: torch.device) -> torch.Tensor:
    """A random batch of the modality's inputs, e.g. ``image:SIZE`` -> (B, 3, SIZE, SIZE) and
    ``points:N`` -> (B, N, 3) inside the unit sphere; an unknown modality is a ConfigError."""
    kind, _, size = spec.partition(":")
    return get_modality(kind).example_input(batch, int(size), device)


def peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def cuda_times_ms(fn: Callable[[], None], steps: int, device: torch.device) -> List[float]:
    """Per-call times in ms: CUDA events on a GPU, the host clock on a CPU."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return times


def step_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def profile_step(step: Callable[[], None], device: torch.device, top: int = 15) -> dict:
    """One step under torch.profiler: kernel launches, host syncs, the costliest kernels, and the ops
    that take the most host time (self CPU time: what bounds an eager step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    syncs = 0
    if device.type == "cuda":
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
            torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"] if device.type == "cuda" else []
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    host = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.device_time_total for e in events)
    families: Dict[str, List[float]] = {}
    for e in events:
        entry = families.setdefault(kernel_family(e.key), [0.0, 0])
        entry[0] += e.device_time_total / 1000
        entry[1] += e.count
    return {"host_syncs": syncs, "kernel_launches": sum(e.count for e in events),
            "kernel_ms": round(total / 1000, 2),
            "families": {k: [round(ms, 2), n] for k, (ms, n) in sorted(families.items(), key=lambda kv: -kv[1][0])},
            "top_kernels": [(e.key[:80], e.count, round(e.device_time_total / 1000, 3)) for e in events[:top]],
            "top_host_ops": [(e.key[:80], e.count, round(e.self_cpu_time_total / 1000, 3)) for e in host[:top]]}


# kernel name -> family, first match wins (the families of BENCHMARKS.md's profile tables)
KERNEL_FAMILIES = [
    ("scan backward", r"_scan_bwd_kernel"), ("scan forward", r"_scan_fwd_kernel"),
    ("conv backward", r"_conv_bwd_kernel"), ("conv forward", r"_conv_fwd_kernel"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("GEMM", r"gemm|cutlass|xmma|nvjet|cublas|Gemm|splitK"),
    ("inductor (fused by torch.compile)", r"^triton_"),
    ("optimizer", r"multi_tensor|FusedOptim|fused_adam"),
    ("copies and casts", r"copy|Copy|CatArray|to_copy|transpose|index_elementwise"),
    ("reductions and norms", r"reduce|Reduce|norm|Norm|softmax"),
    ("other elementwise", r"elementwise|vectorized|unrolled"),
]


def kernel_family(name: str) -> str:
    return next((family for family, pattern in KERNEL_FAMILIES if re.search(pattern, name)), "other")


def chosen_backends(device: torch.device) -> Dict[str, str]:
    """op -> the backend a step on ``device`` runs, for every op with registered backends."""
    return {op: backends.resolve(op, device).name for op in backends.ops()}


def bench_step(model_name: str, batch: int, input_spec: str, precision: str, steps: int, warmup: int,
          device: torch.device, model_kwargs: Optional[dict] = None, compile_mode: Optional[str] = None,
          profile: bool = False, cuda_graphs: bool = False) -> dict:
    """Median training-step time (forward, backward, fused AdamW step) and what follows from it."""
    torch.manual_seed(0)
    model = build_model(model_name, model_kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = make_input(input_spec, batch, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]

    def loss_of(net: nn.Module, inputs: torch.Tensor):
        out = net(inputs)
        # pretraining models return (loss, ...); classifiers return logits
        return (out[0] if isinstance(out, tuple) else out.float().logsumexp(-1).mean()), {}

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
                              cache_enabled=False)

    def forward_backward(net: nn.Module) -> None:
        with autocast():
            loss, _ = loss_of(net, x)
        loss.backward()

    graphed = GraphedStep(model, loss_of, autocast) if cuda_graphs else None
    one = torch.ones((), device=device)

    def step() -> None:
        if graphed is not None:
            graphed(x, one)
        else:
            forward_backward(model)
        opt.step()
        opt.zero_grad(set_to_none=graphed is None)

    objective = getattr(model, "objective", None)
    if objective is not None:  # FLOPs of a step at the mean mask ratio (MAP 2D draws one per step)
        model.objective = dataclasses.replace(objective, mask_ratio_std=0.0)
    flops = step_flops(lambda: forward_backward(model))  # before compiling: FlopCounterMode sees eager ops
    if objective is not None:
        model.objective = objective
    opt.zero_grad(set_to_none=True)
    if compile_mode:
        compile_blocks(model, None if compile_mode == "default" else compile_mode)
    if device.type == "cuda":  # the peak includes warm-up, compilation and graph capture
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    times, captures = [], []
    for _ in range(steps):  # a step that captured a new graph (MAP 2D: a new mask count) is kept apart
        graphs_before = len(graphed.graphs) if graphed is not None else 0
        ms_step = cuda_times_ms(step, 1, device)[0]
        (captures if graphed is not None and len(graphed.graphs) > graphs_before else times).append(ms_step)
    ms = statistics.median(times) if times else float("nan")
    peak = peak_tflops(device)
    achieved = flops / ms / 1e9
    extra = {"profile": profile_step(step, device)} if profile else {}
    return {**extra,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": model_name, "model_kwargs": model_kwargs or {}, "batch": batch, "input": input_spec,
        "precision": precision, "compile": compile_mode or "none", "cuda_graphs": cuda_graphs,
        "backends": chosen_backends(device),
        "ms_per_step": round(ms, 2), "samples_per_s": round(1000 * batch / ms, 1),
        "model_flop_per_step": int(flops), "achieved_tflops": round(achieved, 1),
        "mfu": round(achieved / peak, 4) if peak else None, "warmup_s": round(warm_s, 1),
        "timed_steps": len(times), **({"graphs": len(graphed.graphs), "capture_steps": len(captures),
                                       "capture_ms_median": round(statistics.median(captures), 1) if captures else None}
                                      if graphed is not None else {}),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


# ----------------------------------------------------------------------------- suite
FIXED = {"mask_ratio_std": 0.0}  # MAP 2D with its mean mask ratio every step: static shapes
SUITE = [  # (model, batch, input, model kwargs, step modes): the rows of BENCHMARKS.md's tables
    ("mae_vit_base", 64, "image:224", {}, ("eager", "graphs")),
    ("map_tiny_patch16_224", 64, "image:224", FIXED, ("graphs", "compile+graphs")),
    ("map_small_patch16_224", 64, "image:224", FIXED, ("graphs",)),
    ("map_base_patch16_224", 64, "image:224", {}, ("eager", "graphs")),  # official ratio: a graph per count
    ("map_base_patch16_224", 64, "image:224", FIXED, ("graphs", "compile+graphs")),
    ("map_base_patch16_224", 128, "image:224", FIXED, ("graphs",)),
    ("map_base_patch16_224", 32, "image:384", dict(FIXED, img_size=384), ("graphs",)),
    ("map_base_patch16_224", 16, "image:512", dict(FIXED, img_size=512), ("graphs",)),
    ("pointmap_pretrain", 128, "points:1024", {}, ("eager", "graphs", "compile+graphs")),
    ("pointmap_pretrain", 32, "points:4096", {"num_group": 256}, ("graphs",)),
    ("pointmap_classifier", 32, "points:8192", {"num_group": 512}, ("eager", "graphs")),
]


def main(argv: Optional[List[str]] = None) -> int:
    try:
        load_modalities()  # before the parser: each registered op is a --OP flag
    except USER_ERRORS as err:
        return report_error(err)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a registered model, or mae_vit_base")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--input", default=None, type=input_spec,
                   help="MODALITY:SIZE, e.g. image:224 or points:1024 (default: the model's at its default size)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile every repeated block (default mode, or e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", type=key_value,
                   help="model keyword arguments, YAML values (e.g. depth=3 pointnet_width=64)")
    for op in backends.ops():
        p.add_argument(f"--{op}", default="auto", help=f"{op} backend (auto, torch, triton, ...)")
    p.add_argument("--profile", action="store_true", help="also profile one step (kernels, host syncs)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay forward + backward from CUDA graphs")
    p.add_argument("--compare", nargs="*", default=[], metavar="MODEL",
                   help="also time these models at the same batch and input (e.g. mae_vit_base)")
    p.add_argument("--suite", action="store_true", help="every row of BENCHMARKS.md's model tables")
    p.add_argument("--kernels", action="store_true",
                   help="the kernels against references and floors (runs tools/benchmark_kernels.py)")
    p.add_argument("--sweep", action="store_true", help="with --kernels: block shapes of the scan and conv kernels")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.kernels:
        extra = [flag for flag, given in (("--sweep", args.sweep), ("--debug", args.debug)) if given]
        return subprocess.call([sys.executable, str(KERNELS), *extra])
    try:
        backends.configure({op: getattr(args, op) for op in backends.ops()}, where="--")
    except (ValueError, ImportError) as err:  # an unknown or uninstalled backend
        return report_error(ConfigError(str(err)), args.debug)
    try:
        return run_benchmarks(p, args)
    except USER_ERRORS as err:
        return report_error(err, args.debug)


def run_benchmarks(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The suite, or --model (and --compare), one JSON line per run."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if device.type == "cuda" else "fp32"
    if args.suite:
        runs = [(m, b, i, kw, "default" if "compile" in mode else None, "graphs" in mode)
                for m, b, i, kw, modes in SUITE for mode in modes]
    elif args.model:
        kwargs, spec = dict(args.set), args.input or default_input(args.model)
        runs = [(m, args.batch, spec, kwargs if m == args.model else {}, args.compile, args.cuda_graphs)
                for m in [args.model] + args.compare]
    else:
        p.error("give --model, --suite or --kernels")
    for model, batch, spec, kwargs, mode, graphs in runs:
        try:
            row = bench_step(model, batch, spec, precision, args.steps, args.warmup, device, kwargs, mode,
                             args.profile, graphs and device.type == "cuda")
        except torch.cuda.OutOfMemoryError as err:
            row = {"model": model, "batch": batch, "input": spec, "compile": mode or "none",
                   "error": f"out of memory: {str(err).splitlines()[0]}"}
        print(json.dumps(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
