"""Triton expert_gate kernels vs the PyTorch reference: output and every gradient, per dtype.

Not collected by a plain ``pytest`` run (the file name does not start with ``test_``): ``test_triton_interpret.py``
runs it in a subprocess with ``TRITON_INTERPRET=1``, which must be set before triton is imported, so the real
kernel source runs on CPU tensors. On a CUDA machine it can also be run directly:
``python -m pytest packages/fusion/tests/triton_kernel_cases.py``.
"""

import contextlib
import os
from collections import Counter

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not (INTERPRET or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

from cofe_fusion import expert_gate, expert_gate_reference, resolve_backend  # noqa: E402
from cofe_fusion.ops import expert_gate as ops  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRET else "cpu")

# Explicit tolerances per dtype, for (output, grad) vs the reference run on the same inputs. fp32: both sides
# accumulate in fp32 in a different order. bf16/fp16: both accumulate in fp32 and round once to the storage dtype,
# so they may differ by one ulp of the result (bf16: 2^-8 relative, fp16: 2^-11).
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float64: {"atol": 1e-12, "rtol": 1e-12},
    torch.bfloat16: {"atol": 2e-2, "rtol": 1.6e-2},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
}

SHAPES = [
    # (logits shape, experts shape); D=37, E=3 and 13 tokens are not powers of two.
    pytest.param((13, 3), (13, 3, 37), id="per-row"),
    pytest.param((2, 13, 3), (2, 13, 3, 37), id="per-token-BME"),
    pytest.param((2, 3), (2, 13, 3, 37), id="broadcast-BE-BMED"),
    pytest.param((2, 3), (2, 3, 5, 3, 7), id="broadcast-two-token-dims"),
    pytest.param((3,), (13, 3, 37), id="broadcast-single-gate"),
]


KERNELS = {  # what a launch is counted as -> the kernel's name in cofe_fusion.ops.expert_gate
    "fwd": "_expert_gate_fwd_kernel",
    "bwd": "_expert_gate_bwd_kernel",
    "bwd_logits": "_expert_gate_bwd_logits_kernel",
}


class _Counted:
    """Stands in for a jitted kernel: ``kernel[grid](...)`` counts the launch, then launches the real kernel."""

    def __init__(self, name, kernel, counts):
        self.name, self.kernel, self.counts = name, kernel, counts

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.counts[self.name] += 1
            return launch(*args, **kwargs)

        return run


@contextlib.contextmanager
def launches():
    """Count the launches of each Triton kernel inside the block: proves the Triton path ran, not a fallback."""
    counts = Counter()
    originals = {name: getattr(ops, attr) for name, attr in KERNELS.items()}
    try:
        for name, kernel in originals.items():
            setattr(ops, KERNELS[name], _Counted(name, kernel, counts))
        yield counts
    finally:
        for name, kernel in originals.items():
            setattr(ops, KERNELS[name], kernel)


def _inputs(lshape, xshape, dtype, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(lshape, generator=gen) * scale).to(DEVICE, dtype)
    experts = torch.randn(xshape, generator=gen).to(DEVICE, dtype)
    return logits, experts


def _run(fn, logits, experts, grad_out):
    lg = logits.detach().requires_grad_(True)
    x = experts.detach().requires_grad_(True)
    out = fn(lg, x)
    out.backward(grad_out)
    return out, lg.grad, x.grad


def _check_against_reference(logits, experts, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out_shape = expert_gate_reference(logits, experts).shape
    grad_out = torch.randn(out_shape, generator=gen).to(DEVICE, dtype)
    with launches() as counts:
        out, gl, gx = _run(lambda a, b: expert_gate(a, b, backend="triton"), logits, experts, grad_out)
    # The kernels really ran (forward, expert grad + partial sums, deterministic logits-grad reduction).
    assert counts == {"fwd": 1, "bwd": 1, "bwd_logits": 1}
    ref, rgl, rgx = _run(expert_gate_reference, logits, experts, grad_out)
    assert out.dtype == experts.dtype and gl.dtype == logits.dtype and gx.dtype == experts.dtype
    assert out.shape == ref.shape and gl.shape == logits.shape and gx.shape == experts.shape
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(gx, rgx, **tol)
    # dL/dlogits sums over T x D products: scale the absolute tolerance with the magnitude of that sum.
    gl_scale = max(1.0, float(rgl.abs().max()))
    torch.testing.assert_close(gl, rgl, atol=tol["atol"] * gl_scale * 4, rtol=tol["rtol"] * 4)


def test_dispatch_really_uses_the_triton_kernels():
    assert ops.INTERPRET == INTERPRET
    assert resolve_backend("triton", DEVICE) == "triton"
    with launches() as counts:
        expert_gate(*_inputs((2, 3), (2, 4, 3, 5), torch.float32), backend="triton")
    assert counts == {"fwd": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("lshape", "xshape"), SHAPES)
def test_output_and_gradients_match_reference(lshape, xshape, dtype):
    _check_against_reference(*_inputs(lshape, xshape, dtype), dtype)


@pytest.mark.parametrize(
    ("lshape", "xshape"),
    [
        pytest.param((2, 3), (2, 3, 3, 1100), id="D-spans-two-chunks-with-masked-tail"),
        pytest.param((3, 1), (3, 4, 1, 5), id="one-expert"),
        pytest.param((2, 5), (2, 3, 5, 9), id="E=5"),
        pytest.param((2, 16), (2, 3, 16, 6), id="E=16-max"),
        pytest.param((4, 3), (4, 3, 1), id="D=1"),
    ],
)
def test_edge_sizes_fp32(lshape, xshape):
    _check_against_reference(*_inputs(lshape, xshape, torch.float32), torch.float32)


def test_mixed_dtypes_fp32_logits_bf16_experts():
    logits, _ = _inputs((2, 3), (2, 13, 3, 37), torch.float32)
    _, experts = _inputs((2, 3), (2, 13, 3, 37), torch.bfloat16)
    _check_against_reference(logits, experts, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(dtype):
    gen = torch.Generator().manual_seed(4)
    # Experts stored (B, M, D, E) and viewed (B, M, E, D); logits stored (E, B) and viewed (B, E); a D slice.
    experts = torch.randn(2, 13, 40, 3, generator=gen).to(DEVICE, dtype).transpose(-1, -2)[..., 1:38]
    logits = torch.randn(3, 2, generator=gen).to(DEVICE, dtype).t()
    assert not experts.is_contiguous() and not logits.is_contiguous() and experts.shape == (2, 13, 3, 37)
    _check_against_reference(logits, experts, dtype)
    # Per-token logits sliced with a step, experts with a permuted batch.
    per_tok = torch.randn(2, 26, 3, generator=gen).to(DEVICE, dtype)[:, ::2]
    x = torch.randn(13, 2, 3, 37, generator=gen).to(DEVICE, dtype).transpose(0, 1)
    _check_against_reference(per_tok, x, dtype)


def test_expanded_grad_out_and_partial_requires_grad():
    logits, experts = _inputs((2, 3), (2, 13, 3, 37), torch.float32)
    # `.sum()` hands backward an expanded (stride-0) gradient.
    x = experts.detach().requires_grad_(True)
    expert_gate(logits, x, backend="triton").sum().backward()
    xr = experts.detach().requires_grad_(True)
    expert_gate_reference(logits, xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, **TOL[torch.float32])
    # Only the logits need a gradient.
    lg = logits.detach().requires_grad_(True)
    expert_gate(lg, experts, backend="triton").sum().backward()
    lr = logits.detach().requires_grad_(True)
    expert_gate_reference(lr, experts).sum().backward()
    torch.testing.assert_close(lg.grad, lr.grad, **TOL[torch.float32])


def test_backward_is_deterministic():
    logits, experts = _inputs((2, 3), (2, 13, 3, 1100), torch.float32)
    grad_out = torch.randn(2, 13, 1100, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    runs = [_run(lambda a, b: expert_gate(a, b, backend="triton"), logits, experts, grad_out) for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_gradcheck_fp64_through_the_kernels():
    # Tiny on purpose: the interpreter runs every numerical-Jacobian probe through numpy.
    logits, experts = _inputs((2, 3), (2, 2, 3, 3), torch.float64)
    fn = lambda a, b: expert_gate(a, b, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits.requires_grad_(), experts.requires_grad_()), fast_mode=True)


def test_empty_inputs():
    out = expert_gate(torch.zeros(0, 3, device=DEVICE), torch.zeros(0, 4, 3, 5, device=DEVICE), backend="triton")
    assert out.shape == (0, 4, 5)
    lg = torch.zeros(2, 3, device=DEVICE, requires_grad=True)
    expert_gate(lg, torch.zeros(2, 0, 3, 5, device=DEVICE), backend="triton").sum().backward()
    assert torch.equal(lg.grad, torch.zeros(2, 3, device=DEVICE))


def test_too_many_experts_for_the_kernel():
    with pytest.raises(ValueError, match=r"at most 16 experts; got logits \(2, 17\)"):
        expert_gate(torch.zeros(2, 17, device=DEVICE), torch.zeros(2, 17, 4, device=DEVICE), backend="triton")
