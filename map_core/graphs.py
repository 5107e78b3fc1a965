"""A training micro-step (forward, loss, backward) replayed from CUDA graphs.

A step of eager PyTorch launches thousands of kernels, each with tens of microseconds of host
work; on the device machines that host time, not the GPU, sets the step time of every MAP model
(BENCHMARKS.md). Replaying a captured graph costs one launch.

:class:`GraphedStep` captures ``step_fn(model, batch)`` -- which runs the forward and the loss and
returns ``(loss, info)`` -- followed by ``(loss * scale).backward()``, on first use for each
distinct signature: the batch's shapes and dtypes and, for models that draw a shape on the host
(MAP 2D's per-step mask ratio sets how many tokens are visible), ``model.graph_static_args(inputs)``
(MAP: the number of masked tokens). Gradients accumulate into the parameters' existing ``.grad``
tensors, so every graph shares them, and all graphs share one memory pool: each extra signature
costs its capture time, not another copy of the activations or gradients. Batches are copied into
static buffers (one set per shape), and the returned loss and info are the graph's outputs (read
them before the next replay).

Requirements: one process on a CUDA device (no DDP); a forward with no host reads of device values
and no data-dependent Python control flow; random numbers from the CUDA generator (they differ at
every replay); gradients zeroed in place (``zero_grad(set_to_none=False)``) between steps; autocast
entered with ``cache_enabled=False``. Capturing runs the step ``warmup_iters`` more times for the
first graph and once more for each later one (BatchNorm statistics see those batches; their
gradients are zeroed). MAP 2D's truncated-normal mask ratio gives one graph per mask count (80 for
MAP-Base at 224 px), each captured the first time its count is drawn.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Hashable, Sequence, Tuple

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], Tuple[torch.Tensor, Dict[str, Any]]]


class GraphCaptureError(RuntimeError):
    """The step could not be captured; the message says what a captured step may not do."""


class _Bound(nn.Module):
    """``model`` called with fixed keyword arguments; shares the model's parameters."""

    def __init__(self, model: nn.Module, kwargs: Dict[str, Any]):
        super().__init__()
        self.model, self.kwargs = model, kwargs

    def forward(self, *inputs: Any) -> Any:
        return self.model(*inputs, **self.kwargs)


def _tensors(batch: Any) -> Sequence[torch.Tensor]:
    tensors = [batch] if isinstance(batch, torch.Tensor) else list(batch)
    if not all(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors):
        raise ValueError("CUDA-graph steps take a CUDA tensor or a tuple/list of CUDA tensors as the batch")
    return tensors


class GraphedStep:
    """Forward, loss and backward of one micro-batch, from CUDA graphs (see the module docstring)."""

    def __init__(self, model: nn.Module, step_fn: StepFn, autocast: Callable[[], Any], warmup_iters: int = 3):
        self.model, self.step_fn, self.autocast, self.warmup_iters = model, step_fn, autocast, warmup_iters
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: Dict[Hashable, Tuple[torch.cuda.CUDAGraph, Any]] = {}
        self.inputs: Dict[Hashable, Sequence[torch.Tensor]] = {}  # static batch buffers per shape
        self.scale = None
        self.grads: list = []  # the .grad tensors the graphs accumulate into

    def _run(self, static: Dict[str, Any], batch: Sequence[torch.Tensor], structure: type) -> Any:
        call = _Bound(self.model, static) if static else self.model
        with self.autocast():
            loss, info = self.step_fn(call, batch[0] if structure is torch.Tensor else structure(batch))
        (loss * self.scale).backward()
        return loss.detach(), {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in info.items()}

    def _capture(self, key: Hashable, static: Dict[str, Any], buffers: Sequence[torch.Tensor], structure: type):
        for p in self.model.parameters():  # gradients accumulate into these tensors in every graph
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        self.grads = [p.grad for p in self.model.parameters()]
        saved = [p.grad.clone() for p in self.model.parameters() if p.grad is not None]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy set-up (handles, kernels of new shapes) before capture
            for _ in range(self.warmup_iters if not self.graphs else 1):
                self._run(static, buffers, structure)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the DataLoader's pin-memory thread allocates pinned host memory while we
            # capture, which the default ("global") mode counts as an error that ends the capture
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                outputs = self._run(static, buffers, structure)
        except Exception as err:  # noqa: BLE001  (CUDA reports capture errors as several types)
            raise GraphCaptureError(
                f"capturing the training step as a CUDA graph failed for {key}: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
                "Inside a captured step nothing may copy from the host or wait for the GPU (.item(), "
                "torch.tensor(...) on the device, Python branches on device values), and no autograd graph "
                "of an earlier eager step may still be alive (a live loss keeps gradient accumulation on the "
                "default stream). This process's CUDA state may be unusable now: start again without "
                "train.cuda_graphs to run the same step eagerly.") from err
        with torch.no_grad():  # undo the warm-up and capture passes
            for p, g in zip((p for p in self.model.parameters() if p.grad is not None), saved):
                p.grad.copy_(g)
        log.log(logging.INFO if not self.graphs else logging.DEBUG,
                "captured a CUDA graph of the training step for %s (%d graphs)", key, len(self.graphs) + 1)
        return graph, outputs

    def __call__(self, batch: Any, scale: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Replay (capturing first if needed) for ``batch``; backward of ``loss * scale`` (a device
        scalar, e.g. 1 / accumulation steps) accumulates into ``.grad``. Returns (loss, info)."""
        tensors = _tensors(batch)
        structure = torch.Tensor if isinstance(batch, torch.Tensor) else type(batch)
        inputs = tensors[0]
        static = self.model.graph_static_args(inputs) if hasattr(self.model, "graph_static_args") else {}
        shape_key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        key = (shape_key, tuple(sorted(static.items())))
        if self.scale is None:
            self.scale = torch.ones((), device=inputs.device)
        self.scale.copy_(scale)
        buffers = self.inputs.get(shape_key)
        if buffers is None:
            buffers = self.inputs[shape_key] = [t.clone() for t in tensors]
        for buf, t in zip(buffers, tensors):
            buf.copy_(t)
        if self.grads and any(p.grad is not g for p, g in zip(self.model.parameters(), self.grads)):
            raise RuntimeError("the parameters' .grad tensors changed since the CUDA graphs were captured; "
                               "zero them in place (zero_grad(set_to_none=False)), never to None")
        if key not in self.graphs:
            self.graphs[key] = self._capture(key, static, buffers, structure)
        graph, outputs = self.graphs[key]
        graph.replay()
        return outputs
