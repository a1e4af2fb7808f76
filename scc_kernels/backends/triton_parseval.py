"""The one-pass complex SCC (SPEC "A useful identity"): complex spectrum, one band, no transform,
as two fused Triton kernels.

Forward: `_parseval_forward_kernel` reads the logits and the target once and writes each pixel
block's PARSEVAL_SUMS per channel; torch adds the blocks (_stats.parseval_stats).
Backward: `_parseval_backward_kernel` reads them once more and writes the gradient once,
c_uu·x + c_uv·y + c_dd·(x − y) per sample from the per-slice COEFFICIENTS.

Design: docs/triton-parseval.md
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._stats import PARSEVAL_SUMS, parseval_stats
from .registry import Problem
from .triton_utils import SIGMOID, SOFTMAX, block_index, grid, input_args, label_map


@triton.jit
def _load_tile(
    logits_ptr,
    target_ptr,
    pid_b,
    offs_n,
    C,
    N,
    ignore_index,
    BLOCK_C: tl.constexpr,
    ACTIVATION: tl.constexpr,
    LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
):
    """p = act(logits) (BLOCK_C, BLOCK_N), x = p zeroed where not kept, y = target, kept pixels.

    Every channel of the pixels at once, so that the softmax and its Jacobian reduce over axis 0 in
    registers; triton_utils.load_pair loads one channel of any block of pixels (what the DFT tiles need).
    """
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask_n = offs_n < N
    mask = mask_c[:, None] & mask_n[None, :]
    # int64 offsets: B·C·N may exceed 2**31 elements
    rows = pid_b.to(tl.int64) * C + offs_c
    offsets = rows[:, None] * N + offs_n[None, :]
    z = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION == SOFTMAX:
        z = tl.where(mask_c[:, None], z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=0)[None, :])
        p = e / tl.sum(e, axis=0)[None, :]
    elif ACTIVATION == SIGMOID:
        p = tl.sigmoid(z)
    else:
        p = z
    keep = mask_n
    if LABEL_MAP:
        labels, keep = label_map(target_ptr, pid_b, N, offs_n, mask_n, ignore_index, HAS_IGNORE)
        y = ((labels[None, :] == offs_c[:, None]) & keep[None, :]).to(tl.float32)
    else:
        y = tl.load(target_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    # a product, not a select: NaN at an ignored pixel still reaches the loss (SPEC §5)
    x = tl.where(mask_c[:, None], p * keep.to(tl.float32)[None, :], 0.0)
    return p, x, y, keep


# The two kernels' parameter lists repeat each other: a kernel's parameters are its launch signature,
# and triton >= 3.0 (this package's floor) has no struct arguments that could bundle them.
@triton.jit
def _parseval_forward_kernel(
    logits_ptr,  # logits (B, C, N), any float dtype
    target_ptr,  # integer label map (B, N), or dense target (B, C, N)
    partial_ptr,  # out: PARSEVAL_SUMS per block, (B, num_blocks, C − OFFSET, 6) float32
    C,  # channels
    N,  # samples per slice
    num_blocks,  # pixel blocks per batch item
    ignore_index,  # the label of ignored pixels (read with HAS_IGNORE only)
    BLOCK_C: tl.constexpr,  # C rounded up to a power of 2
    BLOCK_N: tl.constexpr,  # pixels per program
    OFFSET: tl.constexpr,  # the first output channel: 1 leaves the background out
    ACTIVATION: tl.constexpr,  # ACTIVATION_CODES: none, SOFTMAX over the channels, SIGMOID
    LABEL_MAP: tl.constexpr,  # the target is a label map
    HAS_IGNORE: tl.constexpr,  # pixels labelled ignore_index are left out
):
    pid_b, pid_n = block_index(num_blocks)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _, x, y, _ = _load_tile(
        logits_ptr, target_ptr, pid_b, offs_n, C, N, ignore_index, BLOCK_C, ACTIVATION, LABEL_MAP, HAS_IGNORE
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
    logits_ptr,  # logits (B, C, N), any float dtype
    target_ptr,  # integer label map (B, N), or dense target (B, C, N)
    coefficients_ptr,  # COEFFICIENTS (B, C − OFFSET, 7) float32
    grad_ptr,  # out: the gradient of the logits (B, C, N), their dtype
    C,  # channels
    N,  # samples per slice
    num_blocks,  # pixel blocks per batch item
    ignore_index,  # the label of ignored pixels (read with HAS_IGNORE only)
    root_n,  # √N: the origin's share of the means
    BLOCK_C: tl.constexpr,  # C rounded up to a power of 2
    BLOCK_N: tl.constexpr,  # pixels per program
    OFFSET: tl.constexpr,  # the first output channel: 1 leaves the background out
    ACTIVATION: tl.constexpr,  # ACTIVATION_CODES: none, SOFTMAX over the channels, SIGMOID
    LABEL_MAP: tl.constexpr,  # the target is a label map
    HAS_IGNORE: tl.constexpr,  # pixels labelled ignore_index are left out
):
    pid_b, pid_n = block_index(num_blocks)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    p, x, y, keep = _load_tile(
        logits_ptr, target_ptr, pid_b, offs_n, C, N, ignore_index, BLOCK_C, ACTIVATION, LABEL_MAP, HAS_IGNORE
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
    if ACTIVATION == SOFTMAX:
        g = p * (g - tl.sum(p * g, axis=0)[None, :])
    elif ACTIVATION == SIGMOID:
        g = g * p * (1.0 - p)
    rows = pid_b.to(tl.int64) * C + offs_c
    offsets = rows[:, None] * N + offs_n[None, :]
    mask = (offs_c < C)[:, None] & (offs_n < N)[None, :]
    tl.store(grad_ptr + offsets, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _launch_config(channels: int, n: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_N, num_warps): about 2K elements per program of 4 warps, 16 per thread.
    8K elements on 8 warps (32 per thread) took 80-120 registers on sm_90 (compile-check):
    2 blocks, 16 warps per SM, too few loads in flight for a memory-bound kernel; 16 per thread
    keeps the registers low enough for several blocks per SM. Never a block much wider than the image."""
    block_c = triton.next_power_of_2(channels)
    block_n = max(16, min(triton.next_power_of_2(n), max(1, 2048 // block_c)))
    return block_c, block_n, 4


def _static_args(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> dict:
    """Both Parseval kernels' arguments but the tensors (and root_n)."""
    channels, n = input.shape[1], math.prod(input.shape[2:])
    block_c, block_n, num_warps = _launch_config(channels, n)
    return dict(
        C=channels,
        N=n,
        num_blocks=triton.cdiv(n, block_n),
        BLOCK_C=block_c,
        BLOCK_N=block_n,
        num_warps=num_warps,
        OFFSET=problem.offset,
        **input_args(input, target, problem),
    )


def parseval_band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """STATS (B, C', 1, 8) float32 of the complex spectrum with one band."""
    args = _static_args(input, target, problem)
    batch, channels = input.shape[:2]
    partial = input.new_empty(
        (batch, args["num_blocks"], channels - problem.offset, len(PARSEVAL_SUMS)), dtype=torch.float32
    )
    if partial.numel():
        _parseval_forward_kernel[grid(batch, args["num_blocks"])](
            input.contiguous(), target.contiguous(), partial, **args
        )
    return parseval_stats(partial.sum(1), args["N"]).unsqueeze(2)


def parseval_backward(coefficients, input: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Gradient of the input (its dtype) from the COEFFICIENTS (B, C', 7) of the one band."""
    args = _static_args(input, target, problem)
    input = input.contiguous()
    grad_input = torch.empty_like(input)
    if grad_input.numel():
        _parseval_backward_kernel[grid(input.shape[0], args["num_blocks"])](
            input,
            target.contiguous(),
            coefficients.to(torch.float32).contiguous(),
            grad_input,
            root_n=math.sqrt(args["N"]),
            **args,
        )
    return grad_input
