"""Measure training-step throughput of a registered model (forward + backward + optimizer step).

    python tools/benchmark.py --model map_tiny_patch16_224 --batch 64 --input image:224
    python tools/benchmark.py --model pointmap_pretrain --batch 128 --input points:1024 \
        --backend torch --precision bf16 --steps 20 --set depth=6

Prints one JSON line per run: device, model, batch, precision, backend, ms/step, samples/s and
peak GPU memory. Results worth keeping go to BENCHMARKS.md with the command and the date. An
unknown model or key, or sizes the model refuses, end with one 'error: ...' line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from map_core import ssm  # noqa: E402
from map_core.errors import ConfigError  # noqa: E402
from map_core.registry import MODELS, check_kwargs  # noqa: E402
from tools.cli import USER_ERRORS, add_debug_flag, report_error  # noqa: E402


def input_spec(text: str) -> str:
    """argparse type of ``--input``: ``image:SIZE`` or ``points:N``."""
    kind, _, size = text.partition(":")
    if kind not in ("image", "points") or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected image:SIZE or points:N, got {text!r}")
    return text


def key_value(text: str) -> tuple:
    """argparse type of ``--set``: ``key=value`` with a YAML value."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def build_model(name: str, backend: str, kwargs: dict) -> torch.nn.Module:
    """The registered model ``name``; an unknown name or key, or sizes it refuses, is a ConfigError."""
    try:
        builder = MODELS.get(name)
        check_kwargs(builder, kwargs, f"--set of model '{name}'")
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    try:
        return builder(backend=backend, **kwargs)
    except KeyError as err:  # sized factories check their keys themselves
        raise ConfigError(err.args[0]) from None
    except ValueError as err:
        raise ConfigError(f"model '{name}' with {kwargs}: {err}") from None


def make_input(spec: str, batch: int, device: torch.device) -> torch.Tensor:
    """``image:SIZE`` -> (B, 3, SIZE, SIZE); ``points:N`` -> (B, N, 3) on the unit sphere's inside."""
    kind, _, size = spec.partition(":")
    if kind == "image":
        return torch.randn(batch, 3, int(size), int(size), device=device)
    if kind == "points":
        pts = torch.randn(batch, int(size), 3, device=device)
        return pts / pts.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    raise ValueError(f"--input must be image:SIZE or points:N, got {spec!r}")


def bench(model_name: str, batch: int, input_spec: str, backend: str, precision: str,
          steps: int, warmup: int, device: torch.device, model_kwargs: Optional[dict] = None) -> dict:
    model = build_model(model_name, backend, model_kwargs or {}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = make_input(input_spec, batch, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
            # pretraining models return (loss, ...); classifiers return logits
            loss = out[0] if isinstance(out, tuple) else out.float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": model_name, "model_kwargs": model_kwargs or {}, "batch": batch, "input": input_spec, "precision": precision,
        "backend": backend, "scan_checkpoint": ssm.CHECKPOINT_CHUNK, "ms_per_step": round(1000 * seconds, 2),
        "samples_per_s": round(batch / seconds, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input", default="image:224", type=input_spec, help="image:SIZE or points:N")
    p.add_argument("--backend", nargs="+", default=["auto"], help="one or more scan backends to compare")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--scan-checkpoint", type=int, default=None, metavar="STEPS",
                   help="span of the torch scan's backward recomputation (0: keep every state); "
                        "default: map_core.ssm.CHECKPOINT_CHUNK")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", type=key_value,
                   help="model keyword arguments, YAML values (e.g. depth=3 pointnet_width=64)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    model_kwargs = dict(args.set)
    if args.scan_checkpoint is not None:
        ssm.CHECKPOINT_CHUNK = args.scan_checkpoint or None
    import image, pointcloud  # noqa: F401  (registration)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if device.type == "cuda" else "fp32"
    try:
        for backend in args.backend:
            print(json.dumps(bench(args.model, args.batch, args.input, backend, precision,
                                   args.steps, args.warmup, device, model_kwargs)), flush=True)
    except USER_ERRORS as err:
        return report_error(err, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
