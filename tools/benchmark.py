"""Training-step and kernel benchmarks: time, throughput, memory and model-FLOP utilisation.

    # one model: forward + backward + AdamW step
    python tools/benchmark.py --model map_tiny_patch16_224 --batch 64 --input image:224 [--compile]
    python tools/benchmark.py --model pointmap_pretrain --batch 128 --input points:1024 --scan torch
    # --input defaults to the model's modality (map_core.modalities) at its default size
    # the whole comparison of BENCHMARKS.md: MAP sizes, PointMAP, a timm MAE ViT-B step, scaling,
    # each eager, with torch.compile (--compile) or replayed from CUDA graphs (--cuda-graphs)
    python tools/benchmark.py --suite
    # the kernels against their references and their floors (bytes / bandwidth, exp / SFU rate)
    python tools/benchmark.py --kernels [--sweep]

Prints one JSON line per measurement. ``model_flop_per_step`` counts the matmul/conv/attention FLOPs of
one step (forward + backward, at the mean mask ratio) with ``torch.utils.flop_counter.FlopCounterMode``; ``mfu`` divides
the achieved rate by the device's dense bf16 peak (H100 / H200 SXM: 989 TFLOP/s, datasheet).
The step times are CUDA-event medians after warm-up. Results worth keeping go to BENCHMARKS.md.
An unknown model, key or backend, or sizes the model refuses, end with one 'error: ...' line and
exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from map_core import backends  # noqa: E402
from map_core.compile import compile_blocks  # noqa: E402
from map_core.errors import ConfigError  # noqa: E402
from map_core.graphs import GraphedStep  # noqa: E402
from map_core.modalities import get_modality, load_modalities, modality_of  # noqa: E402
from map_core.tokens import gather_tokens  # noqa: E402
from map_core.registry import MODELS, check_kwargs  # noqa: E402
from map_core.ssm import causal_conv1d, selective_scan  # noqa: E402
from tools.cli import USER_ERRORS, add_debug_flag, report_error  # noqa: E402

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
    """One step under torch.profiler: kernel launches, host syncs and the costliest kernels."""
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
    total = sum(e.device_time_total for e in events)
    return {"host_syncs": syncs, "kernel_launches": sum(e.count for e in events),
            "kernel_ms": round(total / 1000, 2),
            "top_kernels": [(e.key[:80], e.count, round(e.device_time_total / 1000, 3)) for e in events[:top]]}


def bench(model_name: str, batch: int, input_spec: str, precision: str, steps: int, warmup: int,
          device: torch.device, model_kwargs: Optional[dict] = None, compile_mode: Optional[str] = None,
          profile: bool = False, cuda_graphs: bool = False) -> dict:
    """Median training-step time (forward, backward, fused AdamW step) and what follows from it."""
    torch.manual_seed(0)
    model = build_model(model_name, model_kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = make_input(input_spec, batch, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    if compile_mode:
        compile_blocks(model, None if compile_mode == "default" else compile_mode)

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
    flops = step_flops(lambda: forward_backward(model))
    if objective is not None:
        model.objective = objective
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":  # the peak includes warm-up, compilation and graph capture
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    ms = statistics.median(cuda_times_ms(step, steps, device))
    peak = peak_tflops(device)
    achieved = flops / ms / 1e9
    extra = {"profile": profile_step(step, device)} if profile else {}
    return {**extra,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": model_name, "model_kwargs": model_kwargs or {}, "batch": batch, "input": input_spec,
        "precision": precision, "compile": compile_mode or "none", "cuda_graphs": cuda_graphs,
        "backends": {op: backends.resolve(op, device).name for op in backends.ops()},
        "ms_per_step": round(ms, 2), "samples_per_s": round(1000 * batch / ms, 1),
        "model_flop_per_step": int(flops), "achieved_tflops": round(achieved, 1),
        "mfu": round(achieved / peak, 4) if peak else None, "warmup_s": round(warm_s, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


# ----------------------------------------------------------------------------- suite
FIXED = {"mask_ratio_std": 0.0}  # MAP 2D with its mean mask ratio every step: static shapes
SUITE = [  # (model, batch, input, model kwargs, step modes): the rows of BENCHMARKS.md's tables
    ("mae_vit_base", 64, "image:224", {}, ("eager", "graphs")),
    ("map_tiny_patch16_224", 64, "image:224", {}, ("eager", "compile")),
    ("map_tiny_patch16_224", 64, "image:224", FIXED, ("graphs",)),
    ("map_small_patch16_224", 64, "image:224", {}, ("eager",)),
    ("map_small_patch16_224", 64, "image:224", FIXED, ("graphs",)),
    ("map_base_patch16_224", 64, "image:224", {}, ("eager", "compile")),
    ("map_base_patch16_224", 64, "image:224", FIXED, ("graphs",)),
    ("map_base_patch16_224", 128, "image:224", FIXED, ("graphs",)),
    ("map_base_patch16_224", 32, "image:384", dict(FIXED, img_size=384), ("graphs",)),
    ("map_base_patch16_224", 16, "image:512", dict(FIXED, img_size=512), ("graphs",)),
    ("pointmap_pretrain", 128, "points:1024", {}, ("eager", "graphs")),
    ("pointmap_pretrain", 32, "points:4096", {"num_group": 256}, ("graphs",)),
    ("pointmap_classifier", 32, "points:8192", {"num_group": 512}, ("eager", "graphs")),
]


# ----------------------------------------------------------------------------- kernels
def _median_ms(fn: Callable[[], None], device: torch.device, reps: int = 50, graph: bool = True) -> float:
    """Median device time of ``fn``. With ``graph``, the calls are replayed from a CUDA graph, so the
    host's launch overhead (measured apart in ``host_overhead``) is left out."""
    if device.type == "cuda":
        import triton.testing

        if graph:
            try:
                return float(triton.testing.do_bench_cudagraph(fn, rep=reps * 4, return_mode="median"))
            except RuntimeError as err:  # not capturable: time launches as they come
                print(json.dumps({"kind": "note", "cudagraph_failed": str(err).splitlines()[0]}), flush=True)
        return float(triton.testing.do_bench(fn, warmup=25, rep=reps * 4, return_mode="median"))
    return statistics.median(cuda_times_ms(fn, max(3, reps // 10), device))


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    src = torch.empty(1 << 29, dtype=torch.uint8, device=device)  # 512 MiB
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, graph=False)
    return 2 * src.numel() / (ms / 1000)


def exp_rate(device: torch.device) -> Optional[float]:
    """exp2 evaluations per second of the special-function units (a register-bound Triton loop)."""
    if device.type != "cuda":
        return None
    import triton
    import triton.language as tl

    @triton.jit
    def chain(out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        x = tl.arange(0, BLOCK).to(tl.float32) * 1e-7 + tl.program_id(0) * 1e-9
        y = x
        for _ in range(ITERS):
            x = tl.exp2(x) * -0.5
            y += x
        tl.store(out_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), y)

    programs, block, iters = 132 * 64, 1024, 256
    out = torch.empty(programs * block, device=device)
    ms = _median_ms(lambda: chain[(programs,)](out, ITERS=iters, BLOCK=block, num_warps=8), device, graph=False)
    return programs * block * iters / (ms / 1000)


def _scan_case(b: int, d: int, n: int, length: int, device: torch.device, dtype=torch.bfloat16):
    g = torch.Generator(device="cpu").manual_seed(0)

    def bld(scale=1.0):  # time-major, as the mixers pass them
        return (torch.randn(b, length, d, generator=g) * scale).to(device, dtype).transpose(1, 2)

    x = dict(u=bld(), delta=bld(0.5), A=-(torch.rand(d, n, generator=g) * 3 + 0.1).to(device),
             B=torch.randn(b, length, n, generator=g).to(device, dtype).transpose(1, 2),
             C=torch.randn(b, length, n, generator=g).to(device, dtype).transpose(1, 2),
             D=torch.randn(d, generator=g).to(device), z=bld(),
             delta_bias=(torch.randn(d, generator=g) * 0.1).to(device))
    return x


def _scan_fwd_bwd(x: dict, backend: str, grad_out: torch.Tensor):
    leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
    out = selective_scan(*leaves.values(), delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return out, dict(zip(leaves, grads))


def _scan_kernel_ms(x: dict, dy: torch.Tensor, device: torch.device) -> tuple:
    """Device time of the training forward (with what it saves) and of the backward kernels."""
    from map_core.kernels import selective_scan as ks

    args = list(x.values())
    fwd = round(_median_ms(lambda: ks.scan_forward(*args, True, False, True, False), device), 4)
    _, ckpt, y, _ = ks.scan_forward(*args, True, False, True, False)
    bwd = round(_median_ms(lambda: ks.scan_backward(dy, *args, ckpt, y, None, True, False), device), 4)
    return fwd, bwd


def scan_floor(b: int, d: int, n: int, length: int, itemsize: int = 2) -> Dict[str, float]:
    """Fewest bytes (fwd: read u, delta, z, B, C, write y; bwd: read those and dy, write du,
    ddelta, dz, dB, dC) and exponentials (exp(delta A) once forward, once in the recomputation)."""
    bdl, bnl = b * d * length * itemsize, b * n * length * itemsize
    return {"bytes": (3 * bdl + 2 * bnl + bdl) + (4 * bdl + 2 * bnl + 3 * bdl + 2 * bnl),
            "exps": 2.0 * b * d * n * length}


def host_overhead(device: torch.device) -> List[dict]:
    """Microseconds of host time per call at a tiny shape (the launch cost, not the kernel's)."""
    from map_core.kernels import causal_conv1d as kc
    from map_core.kernels import selective_scan as ks

    rows = []
    x = _scan_case(1, 32, 16, 8, device)
    dy = torch.randn(1, 32, 8, device=device, dtype=torch.bfloat16)
    xc = torch.randn(1, 8, 32, device=device, dtype=torch.bfloat16).transpose(1, 2)
    w, b = torch.randn(32, 4, device=device), torch.randn(32, device=device)

    def conv_fb():
        leaves = [xc.detach().requires_grad_(), w.detach().requires_grad_(), b.detach().requires_grad_()]
        torch.autograd.grad(causal_conv1d(*leaves, backend="triton"), leaves, dy)

    for flag in (True, False):
        ks.EAGER_FUNCTION = kc.EAGER_FUNCTION = flag
        for name, fn in (("scan_fwd_bwd", lambda: _scan_fwd_bwd(x, "triton", dy)), ("conv_fwd_bwd", conv_fb)):
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            host_us = (time.perf_counter() - t0) / 200 * 1e6
            torch.cuda.synchronize()
            rows.append({"kind": "host_overhead", "op": name, "path": "autograd.Function" if flag else "custom_op",
                         "us_per_call": round(host_us, 1)})
            print(json.dumps(rows[-1]), flush=True)
    ks.EAGER_FUNCTION = kc.EAGER_FUNCTION = True
    return rows


def kernel_report(device: torch.device, sweep: bool) -> List[dict]:
    from map_core.kernels import selective_scan as ks
    from pointcloud import ops

    rows: List[dict] = []
    bw, exps = copy_bandwidth(device), exp_rate(device)
    rows.append({"kind": "ceilings", "copy_GBps": round(bw / 1e9, 1),
                 "exp2_per_s_T": round(exps / 1e12, 3) if exps else None})
    print(json.dumps(rows[-1]), flush=True)
    if device.type == "cuda":
        rows.extend(host_overhead(device))
    cases = [("map_base", 64, 1536, 16, 196), ("map_base", 64, 1536, 16, 98), ("map_base", 128, 1536, 16, 196),
             ("pointmap", 128, 768, 16, 129), ("pointmap", 128, 768, 16, 26)]
    for name, b, d, n, length in cases:
        x = _scan_case(b, d, n, length, device)
        dy = torch.randn(b, d, length, device=device, dtype=torch.bfloat16)
        out, grads = _scan_fwd_bwd(x, "triton", dy)
        row = {"kind": "scan", "shape": name, "batch": b, "d_inner": d, "state": n, "length": length}
        out_r, grads_r = _scan_fwd_bwd(x, "torch", dy)  # the reference, for the errors
        row["rel_err"] = {k: float((v.double() - grads_r[k].double()).norm() / grads_r[k].double().norm())
                          for k, v in grads.items()}
        row["rel_err"]["out"] = float((out.double() - out_r.double()).norm() / out_r.double().norm())
        del out_r, grads_r
        if b == 64 and length == 196:
            row["reference_fwd_bwd_ms"] = round(_median_ms(lambda: _scan_fwd_bwd(x, "torch", dy), device, 5), 2)
        row["fwd_ms"], row["bwd_ms"] = _scan_kernel_ms(x, dy, device)
        row["fwd_bwd_ms"] = round(row["fwd_ms"] + row["bwd_ms"], 4)
        floor = scan_floor(b, d, n, length)
        row["floor_bytes_ms"] = round(floor["bytes"] / bw * 1000, 4)
        if exps:
            row["floor_exp_ms"] = round(floor["exps"] / exps * 1000, 4)
        row["vs_floor"] = round(row["fwd_bwd_ms"] / max(row["floor_bytes_ms"], row.get("floor_exp_ms", 0)), 2)
        if "reference_fwd_bwd_ms" in row:
            row["speedup_vs_reference"] = round(row["reference_fwd_bwd_ms"] / row["fwd_bwd_ms"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if sweep and name == "map_base" and b == 64 and length == 196:
            rows.extend(kernel_sweep(x, dy, device))
    for b, d, length in ((64, 1536, 196), (128, 768, 129)):
        xc = torch.randn(b, length, d, device=device, dtype=torch.bfloat16).transpose(1, 2)
        w, bias = torch.randn(d, 1, 4, device=device), torch.randn(d, device=device)
        dyc = torch.randn(b, length, d, device=device, dtype=torch.bfloat16).transpose(1, 2)
        row = {"kind": "conv", "batch": b, "d_inner": d, "length": length}
        from map_core.kernels import causal_conv1d as kc

        w2 = w.reshape(d, 4)
        row["triton_fwd_ms"] = round(_median_ms(lambda: kc.conv_forward(xc, w2, bias, False), device), 4)
        row["triton_bwd_ms"] = round(_median_ms(lambda: kc.conv_backward(dyc, xc, w2, bias, False), device), 4)
        for backend in ("triton", "torch"):
            def fb():
                leaves = [xc.detach().requires_grad_(), w.detach().requires_grad_(), bias.detach().requires_grad_()]
                with torch.autocast("cuda", dtype=torch.bfloat16):  # as in the models
                    y = causal_conv1d(*leaves, backend=backend)
                torch.autograd.grad(y, leaves, dyc)
            row[f"{backend}_fwd_bwd_ms"] = round(_median_ms(fb, device), 4)
        row["floor_bytes_ms"] = round(5 * xc.numel() * 2 / bw * 1000, 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for b, npts, groups, k in ((128, 1024, 64, 32), (32, 8192, 512, 32), (128, 2048, 128, 32)):
        pts = make_input(f"points:{npts}", b, device)
        row = {"kind": "grouping", "batch": b, "points": npts, "groups": groups, "k": k}
        for backend in ("triton", "torch"):
            idx = ops.fps(pts, groups, backend=backend)
            centres = gather_tokens(pts, idx)
            row[f"fps_{backend}_ms"] = round(_median_ms(lambda: ops.fps(pts, groups, backend=backend), device, 10), 3)
            row[f"knn_{backend}_ms"] = round(_median_ms(lambda: ops.knn(centres, pts, k, backend=backend), device, 10), 3)
        row["fps_equal"] = bool(torch.equal(ops.fps(pts, groups, backend="triton"), ops.fps(pts, groups, backend="torch")))
        centres = gather_tokens(pts, ops.fps(pts, groups, backend="torch"))
        row["knn_equal"] = bool(torch.equal(ops.knn(centres, pts, k, backend="triton"),
                                            ops.knn(centres, pts, k, backend="torch")))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _compiled_info(kernel) -> dict:
    """Registers and spills of the most recently compiled variant of a Triton kernel."""
    try:
        compiled = list(kernel.device_caches[torch.cuda.current_device()][0].values())[-1]
        return {"regs": compiled.n_regs, "spills": compiled.n_spills}
    except (AttributeError, IndexError, KeyError, TypeError):
        return {}


def _sweep(module, kind: str, configs: List[dict], measure: Callable[[], dict], kernel) -> List[dict]:
    """Time ``measure()`` with each config's module constants set (then restore them)."""
    names = sorted({k for cfg in configs for k in cfg})
    saved = {k: getattr(module, k) for k in names}
    rows = []
    try:
        for cfg in configs:
            for k, v in {**saved, **cfg}.items():
                setattr(module, k, v)
            rows.append({"kind": kind, **cfg, **measure(), **_compiled_info(kernel)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
    return rows


def kernel_sweep(x: dict, dy: torch.Tensor, device: torch.device) -> List[dict]:
    """Block shapes of the scan and conv kernels at MAP-Base's shape (all else fixed)."""
    from map_core.kernels import causal_conv1d as kc
    from map_core.kernels import selective_scan as ks

    # scan: channels per program = 32 x warps x channels per thread
    rows = _sweep(ks, "scan_sweep_fwd", [dict(FWD_BLOCK_D=bd, FWD_WARPS=w) for bd, w in ((32, 1), (64, 1), (128, 2))],
                  lambda: {"fwd_ms": _scan_kernel_ms(x, dy, device)[0]}, ks._scan_fwd_kernel)
    rows += _sweep(ks, "scan_sweep_bwd", [dict(BWD_BLOCK_D=bd, BWD_WARPS=w, CHUNK=c) for bd, w, c in
                                          ((32, 1, 4), (32, 1, 2), (64, 1, 2), (64, 1, 4), (64, 2, 4))],
                   lambda: {"bwd_ms": _scan_kernel_ms(x, dy, device)[1]}, ks._scan_bwd_kernel)
    xc, w = x["u"], torch.randn(x["u"].shape[1], 4, device=device)

    def conv_ms() -> dict:
        return {"fwd_ms": round(_median_ms(lambda: kc.conv_forward(xc, w, x["D"], False), device), 4),
                "bwd_ms": round(_median_ms(lambda: kc.conv_backward(dy, xc, w, x["D"], False), device), 4)}

    rows += _sweep(kc, "conv_sweep", [dict(BLOCK_L=bl, BLOCK_D=bd, NUM_WARPS=nw) for bl, bd, nw in
                                      ((16, 64, 4), (32, 64, 4), (64, 64, 4), (16, 128, 4), (32, 128, 8), (64, 32, 4))],
                   conv_ms, kc._conv_bwd_kernel)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    try:
        load_modalities()  # before the parser: each registered op is a --OP flag
    except USER_ERRORS as err:
        return report_error(err)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a registered model, or mae_vit_base")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input", default=None, type=input_spec,
                   help="MODALITY:SIZE, e.g. image:224 or points:1024 (default: the model's at its default size)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
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
    p.add_argument("--kernels", action="store_true", help="the kernels against references and floors")
    p.add_argument("--sweep", action="store_true", help="with --kernels: block shapes of the scan and conv kernels")
    add_debug_flag(p)
    args = p.parse_args(argv)
    try:
        backends.configure({op: getattr(args, op) for op in backends.ops()}, where="--")
    except (ValueError, ImportError) as err:  # an unknown or uninstalled backend
        return report_error(ConfigError(str(err)), args.debug)
    try:
        return run_benchmarks(p, args)
    except USER_ERRORS as err:
        return report_error(err, args.debug)


def run_benchmarks(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The kernel report, the suite, or --model (and --compare), one JSON line per run."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if device.type == "cuda" else "fp32"
    if args.kernels:
        kernel_report(device, args.sweep)
        return 0
    if args.suite:
        runs = [(m, b, i, kw, "default" if mode == "compile" else None, mode == "graphs")
                for m, b, i, kw, modes in SUITE for mode in modes]
    elif args.model:
        kwargs, spec = dict(args.set), args.input or default_input(args.model)
        runs = [(m, args.batch, spec, kwargs if m == args.model else {}, args.compile, args.cuda_graphs)
                for m in [args.model] + args.compare]
    else:
        p.error("give --model, --suite or --kernels")
    for model, batch, spec, kwargs, mode, graphs in runs:
        try:
            row = bench(model, batch, spec, precision, args.steps, args.warmup, device, kwargs, mode, args.profile,
                        graphs and device.type == "cuda")
        except torch.cuda.OutOfMemoryError as err:
            row = {"model": model, "batch": batch, "input": spec, "compile": mode or "none",
                   "error": f"out of memory: {str(err).splitlines()[0]}"}
        print(json.dumps(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
