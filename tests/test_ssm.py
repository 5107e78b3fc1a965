"""The reference selective scan against a scalar, step-by-step recurrence written from the equations."""
import importlib.util
import math

import pytest
import torch

from map_core.ssm import selective_scan, selective_scan_ref


def scan_by_hand(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False):
    """Scalar loops over batch, channel, time and state: h = e^(dt*a) h + dt*b*u; y = c.h + D*u."""
    b_, d_, l_ = u.shape
    n_ = A.shape[1]
    out = torch.zeros(b_, d_, l_, dtype=torch.float64)
    for b in range(b_):
        for d in range(d_):
            h = [0.0] * n_
            for t in range(l_):
                dt = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None else 0.0)
                if softplus:
                    dt = math.log1p(math.exp(dt))
                y = 0.0
                for n in range(n_):
                    h[n] = math.exp(dt * float(A[d, n])) * h[n] + dt * float(B[b, n, t]) * float(u[b, d, t])
                    y += float(C[b, n, t]) * h[n]
                if D is not None:
                    y += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zz = float(z[b, d, t])
                    y *= zz / (1 + math.exp(-zz))
                out[b, d, t] = y
    return out


def inputs(dtype=torch.float64, b=2, d=3, n=4, l=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return dict(
        u=r(b, d, l), delta=r(b, d, l).abs() * 0.5, A=-torch.rand(d, n, generator=g, dtype=dtype) - 0.1,
        B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l), delta_bias=r(d) * 0.1,
    )


@pytest.mark.parametrize("use_d,use_z,use_bias,softplus", [
    (False, False, False, False), (True, False, False, False), (True, True, False, False),
    (True, True, True, True), (False, True, True, False),
])
def test_reference_matches_scalar_recurrence(use_d, use_z, use_bias, softplus):
    x = inputs()
    got = selective_scan_ref(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"] if use_d else None, x["z"] if use_z else None,
        x["delta_bias"] if use_bias else None, softplus,
    )
    want = scan_by_hand(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"] if use_d else None, x["z"] if use_z else None,
        x["delta_bias"] if use_bias else None, softplus,
    )
    # the reference computes in fp32 whatever the input dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_last_state_and_time_invariant_bc():
    x = inputs(dtype=torch.float32)
    out, last = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], return_last_state=True)
    assert last.shape == (2, 3, 4) and last.dtype == torch.float32
    # B, C constant over time given as (D, N) equal the broadcast (B, N, L) version for batch rows
    Bc, Cc = torch.randn(3, 4), torch.randn(3, 4)
    ti = selective_scan_ref(x["u"], x["delta"], x["A"], Bc, Cc)
    for d in range(3):
        Bv = Bc[d][None, :, None].expand(2, 4, 6)
        Cv = Cc[d][None, :, None].expand(2, 4, 6)
        one = selective_scan_ref(x["u"][:, d:d + 1], x["delta"][:, d:d + 1], x["A"][d:d + 1], Bv, Cv)
        torch.testing.assert_close(ti[:, d:d + 1], one)


def test_gradcheck_float64():
    x = inputs(b=1, d=2, n=2, l=4)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    args = [x[k].clone().requires_grad_() for k in names]

    def f(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)


def test_reference_gradients_match_float64_autograd():
    """Gradients of the (fp32) reference equal float64 autograd of the scalar recurrence."""
    x = inputs(b=1, d=2, n=3, l=5, seed=3)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    a32 = [x[k].float().clone().requires_grad_() for k in names]
    a64 = [x[k].clone().requires_grad_() for k in names]
    out32 = selective_scan_ref(*a32[:5], a32[5], a32[6], a32[7], True)
    out64 = scan_torch64(*a64)
    w = torch.randn(out64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g32 = torch.autograd.grad((out32.double() * w).sum(), a32)
    g64 = torch.autograd.grad((out64 * w).sum(), a64)
    for name, a, b in zip(names, g32, g64):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4, msg=name)


def scan_torch64(u, delta, A, B, C, D, z, delta_bias):
    """Differentiable float64 recurrence, one time step at a time (independent of the reference)."""
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    y = torch.stack(ys, -1)
    return y * z * torch.sigmoid(z)


def test_gradcheck_reference_in_float64_path():
    """gradcheck on the float64 recurrence used above, so the oracle's own gradients are right."""
    x = inputs(b=1, d=1, n=2, l=3, seed=5)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    args = [x[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(scan_torch64, args, eps=1e-6, atol=1e-6)


def test_bf16_inputs_use_fp32_state():
    x = inputs(dtype=torch.float32)
    want = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"])
    bf = {k: v.bfloat16() for k, v in x.items()}
    got = selective_scan_ref(bf["u"], bf["delta"], x["A"], bf["B"], bf["C"], x["D"], bf["z"])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)


def test_backend_selection():
    x = inputs(dtype=torch.float32)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(selective_scan(*args), selective_scan_ref(*args))  # CPU: auto -> torch
    with pytest.raises(ValueError, match="unknown scan backend 'cuda_magic'"):
        selective_scan(*args, backend="cuda_magic")
    if importlib.util.find_spec("mamba_ssm") is None:
        with pytest.raises(ImportError, match="mamba_ssm"):
            selective_scan(*args, backend="mamba_ssm")


def test_reverse_equals_flipped_inputs():
    x = inputs(dtype=torch.float32, seed=4)
    keys = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    flipped = {k: (v.flip(-1) if v.dim() == 3 else v) for k, v in x.items()}
    want, want_last = selective_scan_ref(*[flipped[k] for k in keys], True, True)
    got, got_last = selective_scan(*[x[k] for k in keys], True, True, reverse=True)
    torch.testing.assert_close(got, want.flip(-1))
    torch.testing.assert_close(got_last, want_last)


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_checkpointed_spans_match_plain_autograd(chunk):
    """Training in recomputed spans gives the same outputs, last state and gradients."""
    x = inputs(dtype=torch.float32, b=2, d=3, n=4, l=10, seed=7)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    a1 = [x[k].clone().requires_grad_() for k in names]
    a2 = [x[k].clone().requires_grad_() for k in names]
    y1, h1 = selective_scan_ref(*a1, delta_softplus=True, return_last_state=True)
    y2, h2 = selective_scan_ref(*a2, delta_softplus=True, return_last_state=True, checkpoint_chunk=chunk)
    torch.testing.assert_close(y2, y1)
    torch.testing.assert_close(h2, h1)
    w = torch.randn(y1.shape, generator=torch.Generator().manual_seed(0))
    for name, g1, g2 in zip(names, torch.autograd.grad((y1 * w).sum(), a1), torch.autograd.grad((y2 * w).sum(), a2)):
        torch.testing.assert_close(g2, g1, msg=name)


def test_checkpointed_spans_gradcheck_float64():
    x = inputs(b=1, d=2, n=2, l=5, seed=11)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    args = [x[k].clone().requires_grad_() for k in names]

    def f(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, checkpoint_chunk=2)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)
