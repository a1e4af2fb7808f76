"""The one-pass complex SCC (SPEC "A useful identity") as two fused Triton kernels.

Complex spectrum, one band: the five band sums need no transform,

    sum_u = √N·x[0]   sum_v = √N·y[0]   sum_uv = Σ x·y   sum_uu = Σ x²   sum_vv = Σ y²,

so the forward reads the logits and the target once and the backward reads them once more and
writes the gradient once. The activation and the one-hot of a label map live in registers
only. Each program handles all C channels of BLOCK_N pixels of one batch item; the per-block
partial sums go to a small float32 buffer that torch adds up (deterministic, no atomics).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._options import Problem

_ACTIVATION = {"none": 0, "softmax": 1, "sigmoid": 2}


@triton.jit
def _load_tile(
    logits_ptr, target_ptr, pid_b, offs_n, C, N,
    BLOCK_C: tl.constexpr, ACTIVATION: tl.constexpr, LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr, IGNORE_INDEX: tl.constexpr,
):
    """p = act(logits) (BLOCK_C, BLOCK_N), x = p zeroed where not kept, y = target, kept pixels."""
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask_n = offs_n < N
    mask = mask_c[:, None] & mask_n[None, :]
    # int64 offsets: B·C·N may exceed 2**31 elements
    rows = pid_b.to(tl.int64) * C + offs_c
    offsets = rows[:, None] * N + offs_n[None, :]
    z = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION == 1:
        z = tl.where(mask_c[:, None], z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=0)[None, :])
        p = e / tl.sum(e, axis=0)[None, :]
    elif ACTIVATION == 2:
        p = tl.sigmoid(z)
    else:
        p = z
    keep = mask_n
    if LABEL_MAP:
        labels = tl.load(target_ptr + pid_b.to(tl.int64) * N + offs_n, mask=mask_n, other=0).to(tl.int64)
        if HAS_IGNORE:
            keep = keep & (labels != IGNORE_INDEX)
        y = ((labels[None, :] == offs_c[:, None]) & keep[None, :]).to(tl.float32)
    else:
        y = tl.load(target_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x = tl.where(mask_c[:, None] & keep[None, :], p, 0.0)
    return p, x, y, keep


@triton.jit
def _parseval_forward_kernel(
    logits_ptr, target_ptr, partial_ptr, C, N, num_blocks,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, ACTIVATION: tl.constexpr, LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr, IGNORE_INDEX: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _, x, y, _ = _load_tile(
        logits_ptr, target_ptr, pid_b, offs_n, C, N,
        BLOCK_C, ACTIVATION, LABEL_MAP, HAS_IGNORE, IGNORE_INDEX,
    )
    # the origin sample is in block 0 only; every other block contributes 0 to sum_u, sum_v
    origin = (offs_n == 0)[None, :]
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    # partial layout (B, num_blocks, 5, C)
    out = partial_ptr + ((pid_b.to(tl.int64) * num_blocks + pid_n) * 5) * C + offs_c
    tl.store(out, tl.sum(tl.where(origin, x, 0.0), axis=1), mask=mask_c)
    tl.store(out + C, tl.sum(tl.where(origin, y, 0.0), axis=1), mask=mask_c)
    tl.store(out + 2 * C, tl.sum(x * y, axis=1), mask=mask_c)
    tl.store(out + 3 * C, tl.sum(x * x, axis=1), mask=mask_c)
    tl.store(out + 4 * C, tl.sum(y * y, axis=1), mask=mask_c)


@triton.jit
def _parseval_backward_kernel(
    logits_ptr, target_ptr, coef_ptr, grad_ptr, C, N,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, ACTIVATION: tl.constexpr, LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr, IGNORE_INDEX: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    p, x, y, keep = _load_tile(
        logits_ptr, target_ptr, pid_b, offs_n, C, N,
        BLOCK_C, ACTIVATION, LABEL_MAP, HAS_IGNORE, IGNORE_INDEX,
    )
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    # coef (B, 3, C): √N·g_u, g_uv, 2·g_uu; zero for the dropped background channel
    coef = coef_ptr + pid_b.to(tl.int64) * 3 * C + offs_c
    root_n_g_u = tl.load(coef, mask=mask_c, other=0.0)
    g_uv = tl.load(coef + C, mask=mask_c, other=0.0)
    two_g_uu = tl.load(coef + 2 * C, mask=mask_c, other=0.0)
    # x and y are already 0 at ignored pixels and padded channels; so must the origin term be
    g = g_uv[:, None] * y + two_g_uu[:, None] * x
    g += tl.where(((offs_n == 0) & keep)[None, :], root_n_g_u[:, None], 0.0)
    if ACTIVATION == 1:
        g = p * (g - tl.sum(p * g, axis=0)[None, :])
    elif ACTIVATION == 2:
        g = g * p * (1.0 - p)
    rows = pid_b.to(tl.int64) * C + offs_c
    offsets = rows[:, None] * N + offs_n[None, :]
    mask = mask_c[:, None] & (offs_n < N)[None, :]
    tl.store(grad_ptr + offsets, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _launch_config(channels: int, n: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_N, num_warps): about 8K elements per program, enough bytes in flight
    per SM to stream at HBM bandwidth; never a block much wider than the image."""
    block_c = triton.next_power_of_2(channels)
    block_n = max(16, min(triton.next_power_of_2(n), max(1, 8192 // block_c)))
    num_warps = 8 if block_c * block_n >= 4096 else 4
    return block_c, block_n, num_warps


def _static_args(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> dict:
    label_map = target.dim() == input.dim() - 1
    return dict(
        ACTIVATION=_ACTIVATION[problem.activation],
        LABEL_MAP=label_map,
        HAS_IGNORE=label_map and problem.ignore_index is not None,
        IGNORE_INDEX=problem.ignore_index if label_map and problem.ignore_index is not None else 0,
    )


def parseval_sums(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Band sums (B, C', 1, 5) float32 of the complex spectrum with one band."""
    batch, channels = input.shape[:2]
    n = math.prod(input.shape[2:])
    block_c, block_n, num_warps = _launch_config(channels, n)
    num_blocks = triton.cdiv(n, block_n)
    partial = torch.empty((batch, num_blocks, 5, channels), device=input.device, dtype=torch.float32)
    if partial.numel():
        _parseval_forward_kernel[(batch, num_blocks)](
            input.contiguous(), target.contiguous(), partial, channels, n, num_blocks,
            BLOCK_C=block_c, BLOCK_N=block_n, num_warps=num_warps, **_static_args(input, target, problem),
        )  # fmt: skip
    sums = partial.sum(1).transpose(1, 2)  # (B, C, 5)
    scale = sums.new_tensor([math.sqrt(n), math.sqrt(n), 1.0, 1.0, 1.0])
    return (sums * scale)[:, problem.offset :].unsqueeze(2).contiguous()


def parseval_backward(grad_sums: torch.Tensor, input: torch.Tensor, target: torch.Tensor, problem: Problem):
    """Gradient of the input (its dtype) from the gradient of `parseval_sums`' output."""
    batch, channels = input.shape[:2]
    n = math.prod(input.shape[2:])
    grad = grad_sums[:, :, 0].to(torch.float32)  # (B, C', 5)
    coef = torch.zeros((batch, 3, channels), device=input.device, dtype=torch.float32)
    coef[:, 0, problem.offset :] = math.sqrt(n) * grad[..., 0]
    coef[:, 1, problem.offset :] = grad[..., 2]
    coef[:, 2, problem.offset :] = 2 * grad[..., 3]
    input = input.contiguous()
    grad_input = torch.empty_like(input)
    block_c, block_n, num_warps = _launch_config(channels, n)
    if grad_input.numel():
        _parseval_backward_kernel[(batch, triton.cdiv(n, block_n))](
            input, target.contiguous(), coef, grad_input, channels, n,
            BLOCK_C=block_c, BLOCK_N=block_n, num_warps=num_warps, **_static_args(input, target, problem),
        )  # fmt: skip
    return grad_input
