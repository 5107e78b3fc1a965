"""Kernel benchmark: the Triton kernels against their references and their floors, on a CUDA GPU.

    python tools/benchmark_kernels.py [--sweep]     # also: python tools/benchmark.py --kernels [--sweep]

Prints one JSON line per measurement: the device's ceilings (copy bandwidth, exp2 rate), the host
time per call of the scan and conv paths, then per shape of MAP-Base / PointMAP the selective scan
(forward and backward kernels, errors against the reference, floors from bytes moved and
exponentials, and forward + backward through autograd on each installed backend: with mamba-ssm on
the path, the peer beside ours), the causal conv and the point grouping ops (FPS, kNN: each
registered backend against ``torch``); ``--sweep`` adds the block shapes of the scan and conv kernels. One function per
measured thing (``*_row``), one table of shapes per op (``*_CASES``). Device times are medians of
calls replayed from a CUDA graph (``triton.testing.do_bench_cudagraph``). Results worth keeping go
to BENCHMARKS.md. Without a GPU it ends with one 'error: ...' line and exit code 2 (the kernels
are checked on CPU by the test suite, in Triton's interpreter). Installed, this is also the
command `map-benchmark-kernels`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

try:
    from map_core import backends
    from map_core.engine.console import USER_ERRORS, add_debug_flag, report_error
    from map_core.errors import ConfigError
    from map_core.tokens import gather_tokens
    from map_core.modalities import get_modality, load_modalities
    from map_core.ssm import causal_conv1d, selective_scan
except ModuleNotFoundError as err:  # a checkout that is not installed
    if err.name != "map_core":
        raise
    sys.exit("error: the map_core package is not installed; run `pip install -e .` in the repository root")

# (name, batch, d_inner, state, length): the scan at MAP-Base's and PointMAP's shapes
SCAN_CASES = [("map_base", 64, 1536, 16, 196), ("map_base", 64, 1536, 16, 98), ("map_base", 128, 1536, 16, 196),
              ("pointmap", 128, 768, 16, 129), ("pointmap", 128, 768, 16, 26), ("long", 8, 1536, 16, 1024)]
# the shapes --sweep varies the block sizes at: MAP-Base's (scan and conv) and the long sequence's
# (scan only: with few rows, fewer channels per program means more programs in flight)
SWEEP_CASES = {("map_base", 64, 1536, 16, 196): True, ("long", 8, 1536, 16, 1024): False}
REFERENCE_CASES = {("map_base", 64, 1536, 16, 196)}  # the shapes that also time the reference scan
CONV_CASES = [(64, 1536, 196), (128, 768, 129)]  # (batch, d_inner, length)
GROUPING_CASES = [(128, 1024, 64, 32), (32, 8192, 512, 32), (128, 2048, 128, 32)]  # (batch, points, groups, k)


def emit(row: dict) -> dict:
    """Print ``row`` as one JSON line now (a long run shows its progress) and return it."""
    print(json.dumps(row), flush=True)
    return row


def _median_ms(fn: Callable[[], None], device: torch.device, reps: int = 50, graph: bool = True) -> float:
    """Median device time of ``fn`` on the GPU. With ``graph``, the calls are replayed from a CUDA
    graph, so the host's launch overhead (measured apart in ``host_overhead``) is left out."""
    import triton.testing

    if graph:
        try:
            return float(triton.testing.do_bench_cudagraph(fn, rep=reps * 4, return_mode="median"))
        except RuntimeError as err:  # not capturable: time launches as they come
            emit({"kind": "note", "cudagraph_failed": str(err).splitlines()[0]})
    return float(triton.testing.do_bench(fn, warmup=25, rep=reps * 4, return_mode="median"))


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    src = torch.empty(1 << 29, dtype=torch.uint8, device=device)  # 512 MiB
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, graph=False)
    return 2 * src.numel() / (ms / 1000)


def exp_rate(device: torch.device) -> float:
    """exp2 evaluations per second of the special-function units (a register-bound Triton loop)."""
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
            rows.append(emit({"kind": "host_overhead", "op": name, "us_per_call": round(host_us, 1),
                              "path": "autograd.Function" if flag else "custom_op"}))
    ks.EAGER_FUNCTION = kc.EAGER_FUNCTION = True
    return rows


def ceilings_row(device: torch.device) -> dict:
    """What the device can do at most: copy bandwidth and exp2 evaluations per second."""
    return {"kind": "ceilings", "copy_GBps": round(copy_bandwidth(device) / 1e9, 1),
            "exp2_per_s_T": round(exp_rate(device) / 1e12, 3)}


def scan_row(case: tuple, device: torch.device, ceilings: dict, sweep: bool = False) -> dict:
    """The selective scan at one shape: kernel times, errors against the reference, floors."""
    name, b, d, n, length = case
    x = _scan_case(b, d, n, length, device)
    dy = torch.randn(b, d, length, device=device, dtype=torch.bfloat16)
    out, grads = _scan_fwd_bwd(x, "triton", dy)
    row = {"kind": "scan", "shape": name, "batch": b, "d_inner": d, "state": n, "length": length}
    out_r, grads_r = _scan_fwd_bwd(x, "torch", dy)  # the reference, for the errors
    row["rel_err"] = {k: float((v.double() - grads_r[k].double()).norm() / grads_r[k].double().norm())
                      for k, v in grads.items()}
    row["rel_err"]["out"] = float((out.double() - out_r.double()).norm() / out_r.double().norm())
    del out_r, grads_r
    if case in REFERENCE_CASES:
        row["reference_fwd_bwd_ms"] = round(_median_ms(lambda: _scan_fwd_bwd(x, "torch", dy), device, 5), 2)
    row["fwd_ms"], row["bwd_ms"] = _scan_kernel_ms(x, dy, device)
    row["fwd_bwd_ms"] = round(row["fwd_ms"] + row["bwd_ms"], 4)
    # forward + backward as a model calls it (autograd, launches included) on every runnable backend
    # but the reference, so an installed peer (mamba_ssm) is timed beside ours: each in the layout
    # its own model hands it (ours time-major, mamba-ssm's Mamba length-contiguous (B, D, L))
    row["autograd_fwd_bwd_ms"] = {}
    for backend in runnable("scan", device):
        if backend != "torch":
            xin, dyin = (x, dy) if backend == "triton" else ({k: v.contiguous() for k, v in x.items()}, dy.contiguous())
            try:
                row["autograd_fwd_bwd_ms"][backend] = round(
                    _median_ms(lambda: _scan_fwd_bwd(xin, backend, dyin), device, graph=False), 4)
            except RuntimeError as err:  # e.g. mamba_ssm importable but its CUDA extension not built
                row.setdefault("backend_errors", {})[backend] = str(err).splitlines()[0]
    for backend, ms in row["autograd_fwd_bwd_ms"].items():
        if backend != "triton" and "triton" in row["autograd_fwd_bwd_ms"]:
            row[f"triton_vs_{backend}"] = round(row["autograd_fwd_bwd_ms"]["triton"] / ms, 2)
    floor = scan_floor(b, d, n, length)
    row["floor_bytes_ms"] = round(floor["bytes"] / (ceilings["copy_GBps"] * 1e9) * 1000, 4)
    row["floor_exp_ms"] = round(floor["exps"] / (ceilings["exp2_per_s_T"] * 1e12) * 1000, 4)
    row["vs_floor"] = round(row["fwd_bwd_ms"] / max(row["floor_bytes_ms"], row["floor_exp_ms"]), 2)
    if "reference_fwd_bwd_ms" in row:
        row["speedup_vs_reference"] = round(row["reference_fwd_bwd_ms"] / row["fwd_bwd_ms"], 1)
    emit(row)
    if sweep and case in SWEEP_CASES:
        kernel_sweep(x, dy, device, conv=SWEEP_CASES[case], shape=case[0])
    return row


def conv_row(case: tuple, device: torch.device, ceilings: dict) -> dict:
    """The causal conv at one shape: the Triton kernels alone, and forward + backward of each
    backend as the models call it (under bf16 autocast)."""
    from map_core.kernels import causal_conv1d as kc

    b, d, length = case
    xc = torch.randn(b, length, d, device=device, dtype=torch.bfloat16).transpose(1, 2)
    w, bias = torch.randn(d, 1, 4, device=device), torch.randn(d, device=device)
    dyc = torch.randn(b, length, d, device=device, dtype=torch.bfloat16).transpose(1, 2)
    row = {"kind": "conv", "batch": b, "d_inner": d, "length": length}
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
    row["floor_bytes_ms"] = round(5 * xc.numel() * 2 / (ceilings["copy_GBps"] * 1e9) * 1000, 4)
    return emit(row)


def grouping_row(case: tuple, device: torch.device) -> dict:
    """FPS and kNN (the ops the point-cloud modality registers) at one shape: the time of each
    registered backend that runs on ``device``, and whether its indices equal the reference's."""
    b, npts, groups, k = case
    pts = get_modality("points").example_input(b, npts, device)
    fps, knn = (lambda name: backends.get("fps", device, name)), (lambda name: backends.get("knn", device, name))
    centres = gather_tokens(pts, fps("torch")(pts, groups))
    reference = fps("torch")(pts, groups), knn("torch")(centres, pts, k)
    row = {"kind": "grouping", "batch": b, "points": npts, "groups": groups, "k": k}
    for name in runnable("fps", device):
        row[f"fps_{name}_ms"] = round(_median_ms(lambda: fps(name)(pts, groups), device, 10), 3)
        row[f"fps_{name}_equal"] = bool(torch.equal(fps(name)(pts, groups), reference[0]))
    for name in runnable("knn", device):
        row[f"knn_{name}_ms"] = round(_median_ms(lambda: knn(name)(centres, pts, k), device, 10), 3)
        row[f"knn_{name}_equal"] = bool(torch.equal(knn(name)(centres, pts, k), reference[1]))
    return emit(row)


def runnable(op: str, device: torch.device) -> List[str]:
    """The registered backends of ``op`` that are installed and run on ``device`` (public registry API)."""
    found = []
    for name in backends.names(op)[1:]:
        try:
            backends.resolve(op, device, name)
        except (ImportError, ValueError):
            continue
        found.append(name)
    return found


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
            rows.append(emit({"kind": kind, **cfg, **measure(), **_compiled_info(kernel)}))
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
    return rows


def kernel_sweep(x: dict, dy: torch.Tensor, device: torch.device, conv: bool = True, shape: str = "") -> List[dict]:
    """Block shapes and length segments of the scan kernels (and with ``conv`` the conv kernels'
    block shapes) on the inputs ``x`` (all else fixed)."""
    from map_core.kernels import causal_conv1d as kc
    from map_core.kernels import selective_scan as ks

    # scan: channels per program = 32 x warps x channels per thread (16: half a channel per thread,
    # the N states of a channel split over two threads)
    rows = _sweep(ks, "scan_sweep_fwd", [dict(FWD_BLOCK_D=bd, FWD_WARPS=w) for bd, w in
                                         ((16, 1), (32, 1), (64, 1), (128, 2))],
                  lambda: {"shape": shape, "fwd_ms": _scan_kernel_ms(x, dy, device)[0]}, ks._scan_fwd_kernel)
    rows += _sweep(ks, "scan_sweep_bwd", [dict(BWD_BLOCK_D=bd, BWD_WARPS=w, CHUNK=c) for bd, w, c in
                                          ((16, 1, 4), (32, 1, 4), (32, 1, 2), (64, 1, 2), (64, 1, 4), (64, 2, 4))],
                   lambda: {"shape": shape, "bwd_ms": _scan_kernel_ms(x, dy, device)[1]}, ks._scan_bwd_kernel)
    # the length split into segments scanned in parallel (None: the automatic choice; 0: one
    # program per row walks it all)
    length = x["u"].shape[-1]
    rows += _sweep(ks, "scan_sweep_segments", [dict(SEGMENT_STEPS=sg) for sg in (None, 0, 32, 64, 128, 256) if not sg or sg < length],
                   lambda: dict(zip(("fwd_ms", "bwd_ms"), _scan_kernel_ms(x, dy, device)), shape=shape),
                   ks._scan_fwd_kernel)
    if not conv:
        return rows
    xc, w = x["u"], torch.randn(x["u"].shape[1], 4, device=device)

    def conv_ms() -> dict:
        return {"fwd_ms": round(_median_ms(lambda: kc.conv_forward(xc, w, x["D"], False), device), 4),
                "bwd_ms": round(_median_ms(lambda: kc.conv_backward(dy, xc, w, x["D"], False), device), 4)}

    shapes = ((16, 64, 4), (32, 64, 4), (64, 64, 4), (16, 128, 4), (32, 128, 4), (8, 256, 4), (32, 32, 1),
              (64, 32, 2))  # (steps, channels, warps) of a tile, for the forward and the backward alike
    rows += _sweep(kc, "conv_sweep", [dict(FWD_BLOCK_L=bl, FWD_BLOCK_D=bd, FWD_WARPS=nw, BWD_BLOCK_L=bl,
                                           BWD_BLOCK_D=bd, BWD_WARPS=nw) for bl, bd, nw in shapes],
                   conv_ms, kc._conv_bwd_kernel)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help="also the block shapes of the scan and conv kernels")
    add_debug_flag(p)
    args = p.parse_args(argv)
    try:
        if not torch.cuda.is_available():
            raise ConfigError("the kernel benchmark times the Triton kernels on a CUDA GPU, and none is visible; "
                              "on CPU the test suite checks them against the references (TRITON_INTERPRET=1)")
        load_modalities()  # the point-cloud modality registers the grouping ops
        device = torch.device("cuda")
        ceilings = emit(ceilings_row(device))
        host_overhead(device)
        for case in SCAN_CASES:
            scan_row(case, device, ceilings, args.sweep)
        for case in CONV_CASES:
            conv_row(case, device, ceilings)
        if backends.names("fps")[1:] and backends.names("knn")[1:]:
            for case in GROUPING_CASES:
                grouping_row(case, device)
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
