"""The Triton kernels against the references, through the public entry points.

Without a GPU they run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
on tiny, odd shapes; with one, on the GPU. Every option and every gradient is compared.
"""
import pytest
import torch

pytest.importorskip("triton")

from map_core import backends  # noqa: E402
from map_core.mixers import MambaMixer  # noqa: E402
from map_core.ssm import causal_conv1d, selective_scan  # noqa: E402
from pointcloud import ops  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SCAN_ARGS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def scan_inputs(b, d, n, length, time_major=True, var_bc=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def bdl(scale=1.0):
        if time_major:  # (B, L, D) memory seen as (B, D, L), as the mixers pass it
            return (torch.randn(b, length, d, generator=g) * scale).transpose(1, 2)
        return torch.randn(b, d, length, generator=g) * scale

    def bnl():
        return torch.randn(b, length, n, generator=g).transpose(1, 2) if var_bc else torch.randn(d, n, generator=g)

    x = dict(u=bdl(), delta=bdl(0.5), A=-(torch.rand(d, n, generator=g) * 3 + 0.1), B=bnl(), C=bnl(),
             D=torch.randn(d, generator=g), z=bdl(), delta_bias=torch.randn(d, generator=g) * 0.1)
    low = ("u", "delta", "B", "C", "z") if var_bc else ("u", "delta", "z")
    return {k: (v.to(dtype) if k in low else v).to(DEVICE) for k, v in x.items()}


def run_scan(x, backend, use, softplus, reverse, last):
    args = {k: (x[k].detach().clone().requires_grad_() if x[k] is not None else None) for k in SCAN_ARGS}
    for k in SCAN_ARGS:
        if k in ("D", "z", "delta_bias") and k not in use:
            args[k] = None
    res = selective_scan(*[args[k] for k in SCAN_ARGS], delta_softplus=softplus, return_last_state=last,
                         reverse=reverse, backend=backend)
    out, state = res if last else (res, None)
    g = torch.Generator().manual_seed(1)
    loss = (out.float() * torch.randn(out.shape, generator=g).to(DEVICE)).sum()
    if state is not None:
        loss = loss + (state * torch.randn(state.shape, generator=g).to(DEVICE)).sum()
    present = [k for k in SCAN_ARGS if args[k] is not None]
    grads = torch.autograd.grad(loss, [args[k] for k in present])
    return out, state, dict(zip(present, grads))


@pytest.mark.parametrize("b,d,n,length,use,softplus,reverse,last,time_major,var_bc", [
    (2, 5, 4, 1, ("D", "z", "delta_bias"), True, False, True, True, True),
    (1, 40, 3, 37, ("D", "z", "delta_bias"), True, False, True, True, True),   # two channel blocks, 3 chunks
    (2, 6, 4, 19, ("D", "z", "delta_bias"), True, True, True, True, True),     # reverse
    (2, 7, 4, 17, (), False, False, False, False, True),                      # nothing optional, (B, D, L)
    (1, 5, 2, 21, ("z",), True, True, False, False, False),                    # time-invariant B, C
    (2, 3, 8, 16, ("D", "delta_bias"), True, False, True, True, True),         # exactly one chunk
])
def test_scan_matches_reference(b, d, n, length, use, softplus, reverse, last, time_major, var_bc):
    x = scan_inputs(b, d, n, length, time_major, var_bc)
    out, state, grads = run_scan(x, "triton", use, softplus, reverse, last)
    out_r, state_r, grads_r = run_scan(x, "torch", use, softplus, reverse, last)
    assert out.shape == out_r.shape and out.dtype == out_r.dtype
    assert rel_err(out, out_r) < 1e-5
    if last:
        assert rel_err(state, state_r) < 1e-5
    for k, g in grads.items():
        assert g.shape == grads_r[k].shape and g.dtype == grads_r[k].dtype, k
        assert rel_err(g, grads_r[k]) < 1e-4, k


@pytest.mark.parametrize("b,d,n,length,seg,use,reverse,last,var_bc", [
    (2, 40, 3, 37, 8, ("D", "z", "delta_bias"), False, True, True),  # 5 segments, the last partial
    (1, 6, 4, 19, 4, ("D", "z", "delta_bias"), True, True, True),    # reverse; segments of one chunk
    (2, 5, 2, 21, 8, ("z",), True, False, False),                     # time-invariant B, C
    (1, 7, 4, 16, 8, (), False, False, True),                         # two whole segments, nothing optional
    (2, 5, 4, 6, 8, ("D",), False, True, True),                       # shorter than a segment: one program
])
def test_scan_split_along_the_length_matches_reference(monkeypatch, b, d, n, length, seg, use, reverse, last,
                                                       var_bc):
    """Segments of the length scanned in parallel (each from zero, then from its true start state and
    adjoint) give the reference's outputs, last state and every gradient."""
    from map_core.kernels import selective_scan as ks

    monkeypatch.setattr(ks, "SEGMENT_STEPS", seg)
    x = scan_inputs(b, d, n, length, True, var_bc, seed=5)
    out, state, grads = run_scan(x, "triton", use, True, reverse, last)
    out_r, state_r, grads_r = run_scan(x, "torch", use, True, reverse, last)
    assert rel_err(out, out_r) < 1e-5
    if last:
        assert rel_err(state, state_r) < 1e-5
    for k, g in grads.items():
        assert g.shape == grads_r[k].shape and rel_err(g, grads_r[k]) < 1e-4, k


def test_segments_split_only_grids_too_small_for_the_gpu(monkeypatch):
    """The automatic choice splits few rows of a long sequence (the measured win) and nothing at
    MAP-Base's or PointMAP's shapes (measured slower split); segments are whole chunks that cover
    the sequence once; a fixed SEGMENT_STEPS overrides it."""
    from map_core.kernels import selective_scan as ks

    monkeypatch.setattr(ks, "SEGMENT_STEPS", None)
    h200 = 132
    assert ks.segments(8, 1536, 1024, h200) == (128, 8)  # 384 backward programs: split
    for shape in ((64, 1536, 196), (64, 1536, 98), (128, 1536, 196), (128, 768, 129), (128, 768, 26),
                  (16, 1536, 784)):
        assert ks.segments(*shape, h200) == (0, 1), shape
    for b, d, length in ((2, 1536, 2048), (1, 64, 130), (4, 768, 1000), (8, 1536, 129)):
        seg, n_seg = ks.segments(b, d, length, h200)
        assert seg % ks.CHUNK == 0 and seg >= ks.MIN_SEGMENT and (n_seg - 1) * seg < length <= n_seg * seg
    monkeypatch.setattr(ks, "SEGMENT_STEPS", 0)
    assert ks.segments(8, 1536, 1024, h200) == (0, 1)
    monkeypatch.setattr(ks, "SEGMENT_STEPS", 256)
    assert ks.segments(64, 1536, 256, h200) == (0, 1) and ks.segments(64, 1536, 1025, h200) == (256, 5)
    monkeypatch.setattr(ks, "SEGMENT_STEPS", 6)
    with pytest.raises(ValueError, match="multiple of CHUNK"):
        ks.segments(1, 8, 100, h200)


def test_a_long_scan_is_split_by_default_and_matches_the_reference(monkeypatch):
    """The default path (no SEGMENT_STEPS set) on a grid of one program: the interpreter counts as
    one multiprocessor, so 150 steps are cut into segments, and the results are the reference's."""
    from map_core.kernels import selective_scan as ks

    monkeypatch.setattr(ks, "SEGMENT_STEPS", None)
    if DEVICE.type == "cpu":
        assert ks.segments(1, 24, 150, ks._sm_count(DEVICE)) == (64, 3)
    x = scan_inputs(1, 24, 4, 150, seed=7)
    out, state, grads = run_scan(x, "triton", ("D", "z", "delta_bias"), True, False, True)
    out_r, state_r, grads_r = run_scan(x, "torch", ("D", "z", "delta_bias"), True, False, True)
    assert rel_err(out, out_r) < 1e-5 and rel_err(state, state_r) < 1e-5
    for k, g in grads.items():
        assert rel_err(g, grads_r[k]) < 1e-4, k


def test_scan_bf16_inputs_keep_an_fp32_state():
    x = scan_inputs(2, 6, 4, 23, dtype=torch.bfloat16, seed=3)
    use = ("D", "z", "delta_bias")
    out, _, grads = run_scan(x, "triton", use, True, False, False)
    out_r, _, grads_r = run_scan(x, "torch", use, True, False, False)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, out_r) < 1e-2  # one bf16 rounding of the output apart
    for k, g in grads.items():
        assert g.dtype == grads_r[k].dtype and rel_err(g, grads_r[k]) < 2e-2, k


def test_scan_rejects_bad_shapes():
    x = scan_inputs(1, 4, 2, 5)
    with pytest.raises(ValueError, match=r"B must be \(B, N, L\)"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"][:, :, :3], x["C"], backend="triton")


@pytest.mark.parametrize("length,bias,reverse,time_major", [(1, True, False, True), (21, True, False, True),
                                                            (21, False, True, True), (18, True, True, False)])
def test_conv_matches_reference(length, bias, reverse, time_major):
    g = torch.Generator().manual_seed(length)
    b, d, k = 2, 70, 4  # two channel blocks
    x = torch.randn(b, length, d, generator=g).transpose(1, 2) if time_major else torch.randn(b, d, length, generator=g)
    w, bb = torch.randn(d, 1, k, generator=g), torch.randn(d, generator=g) if bias else None
    dy = torch.randn(b, d, length, generator=g).to(DEVICE)
    results = []
    for backend in ("triton", "torch"):
        args = [t.to(DEVICE).requires_grad_() if t is not None else None for t in (x, w, bb)]
        y = causal_conv1d(*args, reverse=reverse, backend=backend)
        grads = torch.autograd.grad((y * dy).sum(), [a for a in args if a is not None])
        results.append((y, grads))
    (y, grads), (y_r, grads_r) = results
    assert rel_err(y, y_r) < 1e-5
    for got, want in zip(grads, grads_r):
        assert got.shape == want.shape and rel_err(got, want) < 1e-5


@pytest.mark.parametrize("b,n_points,n", [(3, 1, 1), (2, 37, 9), (1, 300, 64)])
def test_fps_equals_reference(b, n_points, n):
    xyz = torch.rand(b, n_points, 3, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    assert torch.equal(ops.fps(xyz, n, backend="triton"), ops.fps_torch(xyz, n))


def test_fps_and_knn_ties_go_to_the_lower_index():
    square = torch.tensor([[0., 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]], device=DEVICE)[None]
    assert torch.equal(ops.fps(square, 6, backend="triton"), ops.fps_torch(square, 6))
    assert torch.equal(ops.knn(square, square, 6, backend="triton"), ops.knn_torch(square, square, 6))


@pytest.mark.parametrize("b,m,n_points,k", [(2, 5, 33, 4), (1, 17, 300, 32), (2, 3, 3, 3)])
def test_knn_equals_reference(b, m, n_points, k):
    g = torch.Generator().manual_seed(m)
    query, ref = torch.rand(b, m, 3, generator=g).to(DEVICE), torch.rand(b, n_points, 3, generator=g).to(DEVICE)
    assert torch.equal(ops.knn(query, ref, k, backend="triton"), ops.knn_torch(query, ref, k))


@pytest.mark.parametrize("direction", ["sequence", "channel"])
def test_mixer_on_triton_kernels_matches_reference(direction):
    torch.manual_seed(0)
    mixer = MambaMixer(12, d_state=4, bidirectional=direction).to(DEVICE)
    x = torch.randn(2, 19, 12, device=DEVICE)
    results = []
    for scan, conv in (("triton", "triton"), ("torch", "torch")):
        mixer.zero_grad()
        with backends.using(scan=scan, conv=conv):
            y = mixer(x)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y)).sum().backward()
        results.append((y.detach(), {k: p.grad.clone() for k, p in mixer.named_parameters()}))
    (y, grads), (y_r, grads_r) = results
    assert rel_err(y, y_r) < 1e-5
    for name, g in grads.items():
        assert rel_err(g, grads_r[name]) < 1e-4, name


def _meta(t):
    return None if t is None else (tuple(t.shape), t.stride() if t.numel() else None, t.dtype)


def _fake_matches_real(op, args):
    """The custom op's fake kernel gives its real kernel's shapes, strides and dtypes (what
    torch.compile's inductor asserts at run time)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = op(*args)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    real, fake = (r if isinstance(r, (tuple, list)) else (r,) for r in (real, fake))
    assert [_meta(t) for t in fake] == [_meta(t) for t in real]


@pytest.mark.parametrize("time_major,var_bc,use,reverse", [
    (True, True, ("D", "z", "delta_bias"), False), (True, False, ("D", "z", "delta_bias"), True),
    (False, True, (), False), (False, False, ("z",), True), (True, True, ("D",), True),
])
def test_scan_fake_kernels_give_the_real_layouts(time_major, var_bc, use, reverse):
    from map_core.kernels import selective_scan as ks

    x = scan_inputs(2, 5, 3, 7, time_major=time_major, var_bc=var_bc)
    args = [x[k] if k not in ("D", "z", "delta_bias") or k in use else None for k in SCAN_ARGS]
    for last in (False, True):
        _fake_matches_real(ks._scan_fwd_op, (*args, True, reverse, True, last))
    out, ckpt, y, _ = ks._scan_fwd_op(*args, True, reverse, True, False)
    dout = torch.randn_like(out)
    dlast = torch.randn(2, 5, 3, device=DEVICE)
    for dl in (None, dlast):
        _fake_matches_real(ks._scan_bwd_op, (dout, *args, ckpt, y if "z" in use else None, dl, True, reverse))


@pytest.mark.parametrize("time_major,bias", [(True, True), (False, False)])
def test_conv_fake_kernels_give_the_real_layouts(time_major, bias):
    from map_core.kernels import causal_conv1d as kc

    x = torch.randn(2, 9, 6, device=DEVICE).transpose(1, 2) if time_major else torch.randn(2, 6, 9, device=DEVICE)
    w, b = torch.randn(6, 4, device=DEVICE), torch.randn(6, device=DEVICE) if bias else None
    _fake_matches_real(kc._conv_op, (x, w, b, False))
    _fake_matches_real(kc._conv_bwd_op, (torch.randn_like(x), x, w, b, True))


@pytest.mark.parametrize("direction", ["sequence", pytest.param("channel", marks=pytest.mark.slow)])
def test_mixer_compiled_by_inductor_matches_eager(direction):
    """The whole mixer through inductor (fullgraph: a break is an error), forward and every gradient;
    inductor checks the custom ops' outputs against their fake kernels."""
    torch.manual_seed(0)
    mixer = MambaMixer(8, d_state=4, bidirectional=direction).to(DEVICE)
    x = torch.randn(2, 9, 8, device=DEVICE, requires_grad=True)
    with backends.using(scan="triton", conv="triton"):
        eager = mixer(x)
        (eager * eager).sum().backward()
        want = [x.grad.clone()] + [p.grad.clone() for p in mixer.parameters()]
        mixer.zero_grad()
        x.grad = None
        compiled = torch.compile(mixer, backend="inductor", fullgraph=True, dynamic=True)(x)
        (compiled * compiled).sum().backward()
    assert rel_err(compiled, eager) < 1e-5
    for got, ref in zip([x.grad] + [p.grad for p in mixer.parameters()], want):
        assert rel_err(got, ref) < 1e-4
