"""The expert_gate reference, its dispatch and its input validation (CPU, main process).

The Triton kernels are tested in ``triton_kernel_cases.py``, run by ``test_triton_interpret.py`` in a subprocess
with ``TRITON_INTERPRET=1`` (the variable must be set before triton is imported).
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from cofe_fusion import FusedExpertMix, expert_gate, expert_gate_reference, resolve_backend
from cofe_fusion.ops.common import gate_shapes


def naive_expert_gate(logits, experts):
    """The formula written out with loops: out[..., d] = sum_e exp(z_e) / sum_e' exp(z_e') * x[..., e, d]."""
    k = logits.ndim - 1
    g_shape, t_shape = logits.shape[:-1], experts.shape[k:-2]
    lg = logits.double().reshape(-1, logits.shape[-1])
    x = experts.double().reshape(lg.shape[0], -1, *experts.shape[-2:])
    out = torch.zeros(x.shape[0], x.shape[1], x.shape[-1], dtype=torch.float64)
    for g in range(lg.shape[0]):
        w = [float(torch.exp(z)) for z in lg[g]]
        total = sum(w)
        for t in range(x.shape[1]):
            for e in range(len(w)):
                out[g, t] += w[e] / total * x[g, t, e]
    return out.reshape(*g_shape, *t_shape, experts.shape[-1])


CASES = [
    # (logits shape, experts shape): per-row and broadcast modes, non-power-of-two sizes.
    ((13, 3), (13, 3, 37)),  # per-row, tokens=13, D=37
    ((2, 13, 3), (2, 13, 3, 37)),  # per-token gates (B, M, E)
    ((2, 3), (2, 13, 3, 37)),  # per-sample gates broadcast over M tokens
    ((2, 3), (2, 3, 5, 3, 7)),  # broadcast over two token dims
    ((3,), (13, 3, 37)),  # one gate vector for everything
    ((4, 1), (4, 5, 1, 6)),  # a single expert: the output is that expert
]


@pytest.mark.parametrize(("lshape", "xshape"), CASES)
def test_reference_matches_naive_formula(lshape, xshape):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(lshape, generator=gen) * 3
    experts = torch.randn(xshape, generator=gen)
    out = expert_gate_reference(logits, experts)
    assert out.shape == gate_shapes(logits, experts).out_shape
    torch.testing.assert_close(out.double(), naive_expert_gate(logits, experts), atol=1e-5, rtol=1e-5)


GRADCHECK_CASES = [((5, 3), (5, 3, 7)), ((2, 5, 3), (2, 5, 3, 7)), ((2, 3), (2, 5, 3, 7)), ((2, 3), (2, 2, 3, 3, 5))]


@pytest.mark.parametrize(("lshape", "xshape"), GRADCHECK_CASES)
def test_reference_gradcheck_fp64(lshape, xshape):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(lshape, generator=gen, dtype=torch.float64, requires_grad=True)
    experts = torch.randn(xshape, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(expert_gate_reference, (logits, experts))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_accumulates_in_fp32_and_returns_input_dtype(dtype):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, generator=gen).to(dtype)
    experts = torch.randn(2, 5, 3, 37, generator=gen).to(dtype)
    out = expert_gate_reference(logits, experts)
    assert out.dtype == dtype
    exact = naive_expert_gate(logits, experts)  # fp64 on the same (rounded) inputs
    torch.testing.assert_close(out.double(), exact, atol=1e-2, rtol=1e-2)  # one final rounding to bf16/fp16


def test_uniform_logits_average_the_experts():
    experts = torch.randn(2, 4, 3, 8)
    out = expert_gate(torch.zeros(2, 3), experts)
    torch.testing.assert_close(out, experts.mean(dim=-2))


def test_non_contiguous_inputs_on_reference():
    gen = torch.Generator().manual_seed(3)
    experts = torch.randn(2, 13, 37, 3, generator=gen).transpose(-1, -2)  # (B, M, E, D), E and D swapped in memory
    logits = torch.randn(3, 2, generator=gen).t()  # (B, E) transposed
    assert not experts.is_contiguous() and not logits.is_contiguous()
    out = expert_gate(logits, experts)
    torch.testing.assert_close(out, expert_gate(logits.contiguous(), experts.contiguous()))


def test_module_wrapper_matches_functional():
    logits, experts = torch.randn(2, 3), torch.randn(2, 4, 3, 8)
    mix = FusedExpertMix(backend="reference")
    torch.testing.assert_close(mix(logits, experts), expert_gate(logits, experts))
    with pytest.raises(ValueError, match="unknown backend"):
        FusedExpertMix(backend="cuda")


# ------------------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------------------


def test_auto_dispatch_uses_reference_on_cpu_and_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("COFE_FUSION_BACKEND", raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    expected = "triton" if importlib.util.find_spec("triton") else "reference"
    assert resolve_backend("auto", torch.device("cuda")) == expected
    assert resolve_backend("compiled", torch.device("cpu")) == "compiled"


def test_env_var_forces_a_backend_for_auto_only(monkeypatch):
    monkeypatch.setenv("COFE_FUSION_BACKEND", "compiled")
    assert resolve_backend("auto", torch.device("cuda")) == "compiled"
    assert resolve_backend("reference", torch.device("cuda")) == "reference"  # an explicit argument wins
    monkeypatch.setenv("COFE_FUSION_BACKEND", "gpu")
    with pytest.raises(ValueError, match="COFE_FUSION_BACKEND='gpu'"):
        resolve_backend("auto", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        expert_gate(torch.zeros(1, 3), torch.zeros(1, 3, 4), backend="fast")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter can run on CPU tensors")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_backend_on_cpu_without_interpreter_says_why():
    with pytest.raises(RuntimeError, match=r"need CUDA tensors.*TRITON_INTERPRET=1"):
        expert_gate(torch.zeros(2, 3), torch.zeros(2, 4, 3, 8), backend="triton")


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lshape", "xshape", "message"),
    [
        ((2, 3), (2, 4, 8), r"number of experts differs: logits \(2, 3\) has E=3.*experts \(2, 4, 8\) has 4"),
        ((2, 3), (2, 4, 4, 8), r"number of experts differs"),
        ((2, 3), (5, 4, 3, 8), r"batch dims differ: logits \(2, 3\).*experts \(5, 4, 3, 8\) starts with \(5,\)"),
        ((2, 4, 3), (2, 3, 8), r"at least logits.ndim \+ 1 = 4 dims; got logits \(2, 4, 3\) and experts \(2, 3, 8\)"),
        ((), (3, 8), r"logits must have at least 1 dim"),
    ],
)
def test_bad_shapes_name_both_shapes(lshape, xshape, message):
    with pytest.raises(ValueError, match=message):
        expert_gate(torch.zeros(lshape), torch.zeros(xshape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_are_rejected(bad):
    logits = torch.zeros(2, 4, 3)
    logits[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"logits of shape \(2, 4, 3\) contain NaN or Inf values in 1 of 8"):
        expert_gate(logits, torch.zeros(2, 4, 3, 5))
    # The check can be switched off (e.g. inside a CUDA graph); NaN then propagates as softmax would.
    assert expert_gate(logits, torch.ones(2, 4, 3, 5), check_finite=False)[1, 2].isfinite().all() == (bad < 0)


def test_bad_dtypes_and_devices():
    with pytest.raises(TypeError, match=r"experts must be float16, bfloat16, float32 or float64; got torch.int64"):
        expert_gate(torch.zeros(2, 3), torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"logits must be a torch\.Tensor, got list"):
        expert_gate([0.0, 0.0, 0.0], torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"are on cpu but experts \(2, 3, 4\) are on meta"):
        expert_gate(torch.zeros(2, 3), torch.zeros(2, 3, 4, device="meta"))


@pytest.mark.slow
def test_importing_the_package_does_not_import_triton():
    """TRITON_INTERPRET only works if set before triton's import, so `import cofe_fusion` must not import it."""
    code = "import sys, cofe_fusion; assert 'triton' not in sys.modules, 'triton imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
