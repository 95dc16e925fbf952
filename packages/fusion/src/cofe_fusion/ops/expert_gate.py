"""Fused softmax-gated sum of experts: Triton kernels, host functions and the autograd Function.

Forward, per row ``r = (g, t)`` of the shape rule in ``cofe_fusion.ops.common``::

    p   = softmax(logits[g])                    (E,)     recomputed per program, never stored
    out = sum_e p_e * experts[g, t, e, :]       (D,)

Backward, with ``go = dL/dout``::

    dL/dexperts[g, t, e, d] = p_e * go[g, t, d]
    s[g, e]                 = sum_t sum_d go[g, t, d] * experts[g, t, e, d]
    dL/dlogits[g, e]        = p_e * (s[g, e] - sum_e' p_e' s[g, e'])        (softmax Jacobian-vector product)

Nothing of size ``E x D`` per row is materialised besides the inputs and the expert gradient itself. The
reduction of ``s`` over tokens and D-chunks is deterministic: the first backward kernel writes one fp32 partial
per (row, D-chunk, expert) and a second kernel sums them in a fixed order (no atomics).

Accumulation is fp32 (fp64 when an input is fp64); outputs are stored in the input dtypes.

Kernels launch on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before ``triton`` was
imported (Triton's interpreter runs the same kernel source through numpy; that is how CI tests them).

Shape legend: G gate vectors, T tokens per gate vector, R = G * T rows, E experts, D width,
nD = ceil(D / BLOCK_D) chunks per row.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from cofe_fusion.ops.common import check_expert_gate_inputs, gate_shapes

__all__ = [
    "MAX_EXPERTS",
    "ExpertGateFunction",
    "expert_gate_backward",
    "expert_gate_forward",
    "expert_gate_triton",
    "triton_available_for",
]

# Experts are held in registers as one (BLOCK_E, BLOCK_D) tile; 16 keeps the tile small for any BLOCK_D.
MAX_EXPERTS = 16
# Triton picks the interpreter when `triton.jit` decorates a function, i.e. when this module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _softmax_row(logits_ptr, g, E, s_lg, s_le, BLOCK_E: tl.constexpr, ACC: tl.constexpr):
    """Softmax of one logit vector in ACC precision; padded experts get probability 0."""
    offs_e = tl.arange(0, BLOCK_E)
    z = tl.load(logits_ptr + g * s_lg + offs_e * s_le, mask=offs_e < E, other=float("-inf")).to(ACC)
    z = z - tl.max(z, axis=0)  # max-subtraction: exp never overflows
    w = tl.exp(z)  # exp(-inf) = 0 on padded lanes
    return w / tl.sum(w, axis=0)


@triton.jit
def _expert_gate_fwd_kernel(
    logits_ptr,  # (G, E), any strides
    x_ptr,  # (G, T, E, D), any strides
    out_ptr,  # (R, D) contiguous
    T,
    E,
    D,
    s_lg,
    s_le,
    s_xg,
    s_xt,
    s_xe,
    s_xd,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    # One program per (row, D-chunk). int64 offsets: per-token inputs reach ~1e9 elements at 480p x 81 frames.
    row = tl.program_id(0).to(tl.int64)
    g = row // T
    t = row % T
    offs_e = tl.arange(0, BLOCK_E)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_e = offs_e < E
    mask_d = offs_d < D
    p = _softmax_row(logits_ptr, g, E, s_lg, s_le, BLOCK_E, ACC)  # (BLOCK_E,)
    x_ptrs = x_ptr + g * s_xg + t * s_xt + offs_e[:, None] * s_xe + offs_d[None, :] * s_xd
    x = tl.load(x_ptrs, mask=mask_e[:, None] & mask_d[None, :], other=0.0).to(ACC)  # (BLOCK_E, BLOCK_D)
    y = tl.sum(p[:, None] * x, axis=0)  # (BLOCK_D,)
    tl.store(out_ptr + row * D + offs_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _expert_gate_bwd_kernel(
    logits_ptr,  # (G, E), any strides
    x_ptr,  # (G, T, E, D), any strides
    go_ptr,  # (R, D), any strides
    gx_ptr,  # (R, E, D) contiguous: dL/dexperts
    part_ptr,  # (R, nD, E) contiguous, ACC: partial sum_d go * x per D-chunk
    T,
    E,
    D,
    NUM_D_CHUNKS,
    s_lg,
    s_le,
    s_xg,
    s_xt,
    s_xe,
    s_xd,
    s_gor,
    s_god,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
    NEED_GX: tl.constexpr,
    NEED_GL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    g = row // T
    t = row % T
    offs_e = tl.arange(0, BLOCK_E)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_e = offs_e < E
    mask_d = offs_d < D
    mask = mask_e[:, None] & mask_d[None, :]
    go = tl.load(go_ptr + row * s_gor + offs_d * s_god, mask=mask_d, other=0.0).to(ACC)  # (BLOCK_D,)
    if NEED_GX:
        p = _softmax_row(logits_ptr, g, E, s_lg, s_le, BLOCK_E, ACC)  # (BLOCK_E,)
        gx = p[:, None] * go[None, :]  # (BLOCK_E, BLOCK_D)
        gx_ptrs = gx_ptr + row * E * D + offs_e[:, None] * D + offs_d[None, :]
        tl.store(gx_ptrs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    if NEED_GL:
        x_ptrs = x_ptr + g * s_xg + t * s_xt + offs_e[:, None] * s_xe + offs_d[None, :] * s_xd
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)  # (BLOCK_E, BLOCK_D)
        s = tl.sum(x * go[None, :], axis=1)  # (BLOCK_E,)
        tl.store(part_ptr + (row * NUM_D_CHUNKS + pid_d) * E + offs_e, s, mask=mask_e)


@triton.jit
def _expert_gate_bwd_logits_kernel(
    logits_ptr,  # (G, E), any strides
    part_ptr,  # (G, N, E) contiguous, N = T * nD partials per gate vector
    gl_ptr,  # (G, E) contiguous: dL/dlogits
    N,
    E,
    s_lg,
    s_le,
    BLOCK_N: tl.constexpr,
    BLOCK_E: tl.constexpr,
    ACC: tl.constexpr,
):
    # One program per gate vector; the loop order is fixed, so the result is bitwise reproducible.
    g = tl.program_id(0).to(tl.int64)
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    acc = tl.zeros((BLOCK_N, BLOCK_E), dtype=ACC)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        ptrs = part_ptr + (g * N + offs_n[:, None]) * E + offs_e[None, :]
        acc += tl.load(ptrs, mask=(offs_n[:, None] < N) & mask_e[None, :], other=0.0)
    s = tl.sum(acc, axis=0)  # (BLOCK_E,)
    p = _softmax_row(logits_ptr, g, E, s_lg, s_le, BLOCK_E, ACC)  # (BLOCK_E,)
    gl = p * (s - tl.sum(p * s, axis=0))  # (BLOCK_E,)
    tl.store(gl_ptr + g * E + offs_e, gl.to(gl_ptr.dtype.element_ty), mask=mask_e)


# --------------------------------------------------------------------------------------------------------------
# Host functions
# --------------------------------------------------------------------------------------------------------------


def triton_available_for(t: Tensor) -> bool:
    """Whether the kernels can launch on this tensor's device (CUDA, or any device under TRITON_INTERPRET=1)."""
    return t.is_cuda or INTERPRET


def _launch_config(num_experts: int, dim: int) -> tuple[int, int, int]:
    """(BLOCK_E, BLOCK_D, num_warps): a (BLOCK_E, BLOCK_D) register tile of at most 4096 elements."""
    block_e = triton.next_power_of_2(num_experts)
    block_d = min(triton.next_power_of_2(dim), max(64, 4096 // block_e))
    num_warps = 8 if block_e * block_d >= 4096 else 4
    return block_e, block_d, num_warps


def _acc(logits: Tensor, experts: Tensor) -> tl.dtype:
    return tl.float64 if torch.float64 in (logits.dtype, experts.dtype) else tl.float32


def _check_launchable(logits: Tensor, experts: Tensor, num_experts: int) -> None:
    if not triton_available_for(experts):
        raise RuntimeError(
            f"expert_gate Triton kernels need CUDA tensors; got experts {tuple(experts.shape)} on {experts.device}. "
            "Use backend='reference' on CPU, or set TRITON_INTERPRET=1 before importing triton to run the kernels "
            "through Triton's interpreter."
        )
    if num_experts > MAX_EXPERTS:
        raise ValueError(
            f"expert_gate Triton kernels support at most {MAX_EXPERTS} experts; got logits {tuple(logits.shape)} "
            f"(E={num_experts}); use backend='reference'"
        )


def _views(logits: Tensor, experts: Tensor) -> tuple[Tensor, Tensor, int, int, int, int]:
    """Collapse to ``logits (G, E)`` and ``experts (G, T, E, D)``; ``reshape`` copies only if strides demand it."""
    s = gate_shapes(logits, experts)
    lg = logits.reshape(s.num_gates, s.num_experts)  # (G, E)
    x = experts.reshape(s.num_gates, s.tokens_per_gate, s.num_experts, s.dim)  # (G, T, E, D)
    return lg, x, s.num_gates, s.tokens_per_gate, s.num_experts, s.dim


def expert_gate_forward(logits: Tensor, experts: Tensor) -> Tensor:
    """Launch the forward kernel.

    Args:
        logits: ``(*G, E)``.
        experts: ``(*G, *T, E, D)``.

    Returns:
        ``(*G, *T, D)`` in ``experts.dtype``.
    """
    shapes = gate_shapes(logits, experts)
    _check_launchable(logits, experts, shapes.num_experts)
    lg, x, G, T, E, D = _views(logits, experts)
    out = torch.empty(G * T, D, device=experts.device, dtype=experts.dtype)  # (R, D)
    if out.numel() == 0:
        return out.reshape(shapes.out_shape)
    block_e, block_d, num_warps = _launch_config(E, D)
    grid = (G * T, triton.cdiv(D, block_d))
    _expert_gate_fwd_kernel[grid](
        lg, x, out, T, E, D, *lg.stride(), *x.stride(),
        BLOCK_E=block_e, BLOCK_D=block_d, ACC=_acc(logits, experts), num_warps=num_warps,
    )  # fmt: skip
    return out.reshape(shapes.out_shape)  # (*G, *T, D)


def expert_gate_backward(
    grad_out: Tensor,
    logits: Tensor,
    experts: Tensor,
    need_logits_grad: bool = True,
    need_experts_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Launch the backward kernels.

    Args:
        grad_out: ``(*G, *T, D)`` gradient of the output.
        logits: ``(*G, E)`` the forward's logits.
        experts: ``(*G, *T, E, D)`` the forward's experts.
        need_logits_grad: compute ``dL/dlogits``.
        need_experts_grad: compute ``dL/dexperts``.

    Returns:
        ``(dL/dlogits (*G, E) in logits.dtype or None, dL/dexperts (*G, *T, E, D) in experts.dtype or None)``.
    """
    shapes = gate_shapes(logits, experts)
    if tuple(grad_out.shape) != shapes.out_shape:
        raise ValueError(f"expert_gate backward: grad_out must be {shapes.out_shape}, got {tuple(grad_out.shape)}")
    _check_launchable(logits, experts, shapes.num_experts)
    lg, x, G, T, E, D = _views(logits, experts)
    R = G * T
    dev = experts.device
    go = grad_out.reshape(R, D)  # (R, D)
    block_e, block_d, num_warps = _launch_config(E, D)
    n_chunks = triton.cdiv(D, block_d)
    acc = _acc(logits, experts)
    acc_torch = torch.float64 if acc == tl.float64 else torch.float32
    gx = torch.empty(R, E, D, device=dev, dtype=experts.dtype) if need_experts_grad else None  # (R, E, D)
    part = torch.empty(R, n_chunks, E, device=dev, dtype=acc_torch) if need_logits_grad else None  # (R, nD, E)
    gl = torch.empty(G, E, device=dev, dtype=logits.dtype) if need_logits_grad else None  # (G, E)
    if R * D > 0 and (need_experts_grad or need_logits_grad):
        # Unused pointers still need a tensor argument; the constexpr flags compile their code out.
        _expert_gate_bwd_kernel[(R, n_chunks)](
            lg, x, go, gx if gx is not None else go, part if part is not None else go,
            T, E, D, n_chunks, *lg.stride(), *x.stride(), *go.stride(),
            BLOCK_E=block_e, BLOCK_D=block_d, ACC=acc, NEED_GX=need_experts_grad, NEED_GL=need_logits_grad,
            num_warps=num_warps,
        )  # fmt: skip
    if need_logits_grad:
        if R * D == 0:  # no tokens or no width: the output does not depend on the logits
            gl.zero_()
        elif G > 0:
            n = T * n_chunks
            block_n = max(1, min(triton.next_power_of_2(n), 4096 // block_e))
            _expert_gate_bwd_logits_kernel[(G,)](
                lg, part, gl, n, E, *lg.stride(), BLOCK_N=block_n, BLOCK_E=block_e, ACC=acc, num_warps=4
            )
        gl = gl.reshape(logits.shape)  # (*G, E)
    if gx is not None:
        gx = gx.reshape(experts.shape)  # (*G, *T, E, D)
    return gl, gx


class ExpertGateFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels. Saves the inputs (not the softmax): backward recomputes it."""

    @staticmethod
    def forward(ctx, logits: Tensor, experts: Tensor) -> Tensor:
        ctx.save_for_backward(logits, experts)
        return expert_gate_forward(logits, experts)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
        logits, experts = ctx.saved_tensors
        need_l, need_x = ctx.needs_input_grad
        return expert_gate_backward(grad_out, logits, experts, need_l, need_x)


def expert_gate_triton(logits: Tensor, experts: Tensor, check_finite: bool = True) -> Tensor:
    """Validated entry point of the Triton path (see ``cofe_fusion.expert_gate`` for the dispatching API)."""
    check_expert_gate_inputs(logits, experts, check_finite)
    return ExpertGateFunction.apply(logits, experts)
