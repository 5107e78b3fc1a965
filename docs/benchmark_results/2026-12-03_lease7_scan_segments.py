"""Leases 7 and 8 (session 4): the selective scan split along the length (SEGMENT_STEPS) at the peer table's
six shapes and two longer ones; each segment length's kernel times and its results against the
unsplit scan's; autograd fwd+bwd of ours (unsplit and best split) and of the mamba-ssm peer."""
import importlib.util
import json
import sys

import torch

spec = importlib.util.spec_from_file_location("bk", "tools/benchmark_kernels.py")
bk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bk)
from map_core.kernels import selective_scan as ks  # noqa: E402

SHAPES = bk.SCAN_CASES + [("hires_784", 16, 1536, 16, 784), ("pointmap_1k", 32, 768, 16, 513),
                          ("long_b2", 2, 1536, 16, 2048)]
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
out_path = sys.argv[1]
CHECK = len(sys.argv) > 2 and sys.argv[2] == "check"  # only the automatic choice against unsplit and the peer
if CHECK:
    SHAPES = [("long", 8, 1536, 16, 1024), ("long_b2", 2, 1536, 16, 2048), ("hires_784", 16, 1536, 16, 784),
              ("long_b4_768", 4, 768, 16, 1024)]


if dev.type == "cpu":  # a dry run of the logic in Triton's interpreter (TRITON_INTERPRET=1), tiny shapes
    SHAPES = [("tiny", 2, 40, 4, 140), ("tiny_short", 1, 8, 4, 20)]
    bk._median_ms = lambda fn, device, reps=50, graph=True: (fn(), 0.0)[1]


def emit(row):
    print(json.dumps(row), flush=True)
    with open(out_path, "a") as f:
        f.write(json.dumps(row) + "\n")


def fwd_bwd_kernels(x, dy):
    args = list(x.values())
    out, ckpt, y, _ = ks.scan_forward(*args, True, False, True, False)
    grads = ks.scan_backward(dy, *args, ckpt, y, None, True, False)
    return out, grads


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


for name, b, d, n, length in SHAPES:
    x = bk._scan_case(b, d, n, length, dev)
    dy = torch.randn(b, d, length, device=dev, dtype=torch.bfloat16)
    ks.SEGMENT_STEPS = 0
    out0, g0 = fwd_bwd_kernels(x, dy)
    best = (None, 1e9)
    for seg in ((None, 0) if CHECK else (0, 16, 32, 64, 128, 256)):
        if seg is not None and seg and seg >= length:
            continue
        ks.SEGMENT_STEPS = seg
        try:
            out, g = fwd_bwd_kernels(x, dy)
            errs = {"out": rel(out, out0)}
            errs.update({k: rel(a, c) for k, a, c in zip(("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"), g, g0)
                         if a is not None and c is not None})
            fwd, bwd = bk._scan_kernel_ms(x, dy, dev)
        except Exception as err:  # noqa: BLE001
            emit({"kind": "seg_error", "shape": name, "seg": seg, "error": repr(err)[:300]})
            continue
        emit({"kind": "seg", "shape": name, "b": b, "d": d, "L": length, "seg": seg,
              "n_seg": ks.segments(b, d, length, ks._sm_count(dev))[1], "fwd_ms": fwd, "bwd_ms": bwd, "sum_ms": round(fwd + bwd, 4),
              "max_rel_err_vs_unsplit": max(errs.values())})
        if seg is not None and fwd + bwd < best[1]:
            best = (seg, fwd + bwd)
    row = {"kind": "seg_autograd", "shape": name, "b": b, "d": d, "L": length, "best_seg": best[0]}
    for seg in ((0, None) if CHECK else sorted({0, best[0]})):
        ks.SEGMENT_STEPS = seg
        row[f"triton_seg{seg}_ms"] = round(bk._median_ms(lambda: bk._scan_fwd_bwd(x, "triton", dy), dev,
                                                         graph=False), 4)
    if CHECK:  # (lease 8 computed this after the reset below and logged [0, 1]; its seg rows' n_seg are right)
        ks.SEGMENT_STEPS = None
        row["auto_choice"] = ks.segments(b, d, length, ks._sm_count(dev))
    ks.SEGMENT_STEPS = 0
    try:
        xc, dyc = {k: v.contiguous() for k, v in x.items()}, dy.contiguous()
        row["mamba_ssm_ms"] = round(bk._median_ms(lambda: bk._scan_fwd_bwd(xc, "mamba_ssm", dyc), dev, graph=False), 4)
        row["best_vs_mamba_ssm"] = round(row[f"triton_seg{best[0]}_ms"] / row["mamba_ssm_ms"], 3)
        if CHECK:
            row["auto_vs_mamba_ssm"] = round(row["triton_segNone_ms"] / row["mamba_ssm_ms"], 3)
        row["unsplit_vs_mamba_ssm"] = round(row["triton_seg0_ms"] / row["mamba_ssm_ms"], 3)
    except Exception as err:  # noqa: BLE001
        row["peer_error"] = repr(err)[:300]
    emit(row)
    del x, dy, out0, g0
    torch.cuda.empty_cache()
