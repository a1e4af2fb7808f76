"""The one-pass complex SCC (SPEC "A useful identity") as two fused Triton kernels.

Complex spectrum, one band: the band statistics need no transform (_stats.parseval_stats).
The forward sums PARSEVAL_SUMS per slice: the origin samples x[0], y[0], and Σ x², Σ y², Σ x·y,
Σ (x − y)² over every sample but the origin, (x − y)² formed per sample so that it keeps its
digits when the prediction is close to the target. The backward writes, per sample,
c_uu·x + c_uv·y + c_dd·(x − y) (and √N·c_mean at the origin, which enters through the means
only) from the per-slice COEFFICIENTS of _stats.gradient_coefficients. So the forward reads the
logits and the target once and the backward reads them once more and writes the gradient once.
The activation and the one-hot of a label map live in registers only. Each program handles all
C channels (a class count: small) of BLOCK_N pixels of one batch item, on a 1-D grid of
B·cdiv(N, BLOCK_N) programs (only the first grid axis may exceed 65535; `_grid`), pixel
offsets in int64 (a slice may hold 2**31 samples or more); the per-block partial sums go to a
small float32 buffer that torch adds up (deterministic, no atomics; every sum but Σ x·y adds
non-negative terms, and the origin is in block 0 only).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._options import ACTIVATION_CODES, Problem, is_label_map
from .._stats import PARSEVAL_SUMS, parseval_stats


@triton.jit
def _load_tile(
    logits_ptr,
    target_ptr,
    pid_b,
    offs_n,
    C,
    N,
    BLOCK_C: tl.constexpr,
    ACTIVATION: tl.constexpr,
    LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    IGNORE_INDEX: tl.constexpr,
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
    # a product, not a select: NaN at an ignored pixel still reaches the loss (SPEC §5)
    x = tl.where(mask_c[:, None], p * keep.to(tl.float32)[None, :], 0.0)
    return p, x, y, keep


@triton.jit
def _block(num_blocks):
    """(batch item, pixel block, int64) of this program on the 1-D grid of `_grid`."""
    pid = tl.program_id(0).to(tl.int64)
    return pid // num_blocks, pid % num_blocks


@triton.jit
def _parseval_forward_kernel(
    logits_ptr,
    target_ptr,
    partial_ptr,
    C,
    N,
    num_blocks,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    OFFSET: tl.constexpr,
    ACTIVATION: tl.constexpr,
    LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    IGNORE_INDEX: tl.constexpr,
):
    pid_b, pid_n = _block(num_blocks)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _, x, y, _ = _load_tile(
        logits_ptr,
        target_ptr,
        pid_b,
        offs_n,
        C,
        N,
        BLOCK_C,
        ACTIVATION,
        LABEL_MAP,
        HAS_IGNORE,
        IGNORE_INDEX,
    )
    # the origin sample is in block 0 only: other blocks write 0 for it, and it is left out of the sums
    origin = (offs_n == 0)[None, :]
    rest_x = tl.where(origin, 0.0, x)
    rest_y = tl.where(origin, 0.0, y)
    rest_d = rest_x - rest_y
    # partial sums (B, num_blocks, C - OFFSET, 6), PARSEVAL_SUMS layout, output channels only
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = (offs_c >= OFFSET) & (offs_c < C)
    out = partial_ptr + ((pid_b.to(tl.int64) * num_blocks + pid_n) * (C - OFFSET) + offs_c - OFFSET) * 6
    tl.store(out, tl.sum(tl.where(origin, x, 0.0), axis=1), mask=mask_c)
    tl.store(out + 1, tl.sum(tl.where(origin, y, 0.0), axis=1), mask=mask_c)
    tl.store(out + 2, tl.sum(rest_x * rest_x, axis=1), mask=mask_c)
    tl.store(out + 3, tl.sum(rest_y * rest_y, axis=1), mask=mask_c)
    tl.store(out + 4, tl.sum(rest_x * rest_y, axis=1), mask=mask_c)
    tl.store(out + 5, tl.sum(rest_d * rest_d, axis=1), mask=mask_c)


@triton.jit
def _parseval_backward_kernel(
    logits_ptr,
    target_ptr,
    coefficients_ptr,
    grad_ptr,
    C,
    N,
    num_blocks,
    root_n,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    OFFSET: tl.constexpr,
    ACTIVATION: tl.constexpr,
    LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    IGNORE_INDEX: tl.constexpr,
):
    pid_b, pid_n = _block(num_blocks)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    p, x, y, keep = _load_tile(
        logits_ptr,
        target_ptr,
        pid_b,
        offs_n,
        C,
        N,
        BLOCK_C,
        ACTIVATION,
        LABEL_MAP,
        HAS_IGNORE,
        IGNORE_INDEX,
    )
    # coefficients (B, C - OFFSET, 7), COEFFICIENTS layout; the dropped background channel's are 0
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = (offs_c >= OFFSET) & (offs_c < C)
    coef = coefficients_ptr + (pid_b.to(tl.int64) * (C - OFFSET) + offs_c - OFFSET) * 7
    c_mean = tl.load(coef, mask=mask_c, other=0.0).to(tl.float32)
    c_uu = tl.load(coef + 1, mask=mask_c, other=0.0).to(tl.float32)
    c_uv = tl.load(coef + 2, mask=mask_c, other=0.0).to(tl.float32)
    c_dd = tl.load(coef + 3, mask=mask_c, other=0.0).to(tl.float32)
    g = c_uu[:, None] * x + c_uv[:, None] * y + c_dd[:, None] * (x - y)
    # the origin enters through the means only; ignored samples get no gradient
    g = tl.where((offs_n == 0)[None, :], root_n * c_mean[:, None], g)
    g = tl.where(keep[None, :], g, 0.0)
    if ACTIVATION == 1:
        g = p * (g - tl.sum(p * g, axis=0)[None, :])
    elif ACTIVATION == 2:
        g = g * p * (1.0 - p)
    rows = pid_b.to(tl.int64) * C + offs_c
    offsets = rows[:, None] * N + offs_n[None, :]
    mask = (offs_c < C)[:, None] & (offs_n < N)[None, :]
    tl.store(grad_ptr + offsets, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _launch_config(channels: int, n: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_N, num_warps): about 8K elements per program, enough bytes in flight
    per SM to stream at HBM bandwidth; never a block much wider than the image."""
    block_c = triton.next_power_of_2(channels)
    block_n = max(16, min(triton.next_power_of_2(n), max(1, 8192 // block_c)))
    num_warps = 8 if block_c * block_n >= 4096 else 4
    return block_c, block_n, num_warps


def _grid(batch: int, num_blocks: int) -> tuple[int]:
    """One grid axis of rows·blocks programs (rows: batch items or slices): CUDA allows 2**31 − 1
    on the first axis, 65535 on the others."""
    programs = batch * num_blocks
    if programs >= 2**31:
        raise ValueError(
            f"scc_kernels triton backend: {programs} programs ({batch} rows × {num_blocks} blocks) "
            "exceed CUDA's grid limit; split the batch"
        )
    return (programs,)


def _static_args(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> dict:
    channels, n = input.shape[1], math.prod(input.shape[2:])
    block_c, block_n, num_warps = _launch_config(channels, n)
    label_map = is_label_map(input, target)
    has_ignore = label_map and problem.ignore_index is not None
    return dict(
        C=channels,
        N=n,
        BLOCK_C=block_c,
        BLOCK_N=block_n,
        num_warps=num_warps,
        OFFSET=problem.offset,
        ACTIVATION=ACTIVATION_CODES[problem.activation],
        LABEL_MAP=label_map,
        HAS_IGNORE=has_ignore,
        IGNORE_INDEX=problem.ignore_index if has_ignore else 0,
    )


def parseval_band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """STATS (B, C', 1, 8) float32 of the complex spectrum with one band."""
    args = _static_args(input, target, problem)
    batch, channels = input.shape[:2]
    num_blocks = triton.cdiv(args["N"], args["BLOCK_N"])
    partial = input.new_empty((batch, num_blocks, channels - problem.offset, len(PARSEVAL_SUMS)), dtype=torch.float32)
    if partial.numel():
        _parseval_forward_kernel[_grid(batch, num_blocks)](
            input.contiguous(), target.contiguous(), partial, num_blocks=num_blocks, **args
        )
    return parseval_stats(partial.sum(1), args["N"]).unsqueeze(2)


def parseval_backward(coefficients, input: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Gradient of the input (its dtype) from the COEFFICIENTS (B, C', 7) of the one band."""
    args = _static_args(input, target, problem)
    input = input.contiguous()
    grad_input = torch.empty_like(input)
    if grad_input.numel():
        num_blocks = triton.cdiv(args["N"], args["BLOCK_N"])
        _parseval_backward_kernel[_grid(input.shape[0], num_blocks)](
            input,
            target.contiguous(),
            coefficients.to(torch.float32).contiguous(),
            grad_input,
            num_blocks=num_blocks,
            root_n=math.sqrt(args["N"]),
            **args,
        )
    return grad_input
