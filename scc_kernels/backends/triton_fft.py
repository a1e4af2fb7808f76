"""Triton kernels around torch.fft (cuFFT on a GPU) for the amplitude and banded spectra, any size
and rank.

Forward: `_signals_kernel` (activation, one-hot, ignore mask → the base and x − y per slice,
float32) → torch.fft.rfftn → `_stats_kernel` (per tile of bins, the 8 STATS of each band it
touches; _stats.merge combines the tiles). Saves the half spectra and base_is_x.
Backward: `_grad_kernel` (per bin, the gradient of the half spectrum from its band's COEFFICIENTS)
→ torch.fft.irfftn → triton_utils.finish_gradient (ignore mask, activation Jacobian, the input's
dtype). No atomics: deterministic.

Design and figures: docs/triton-fft.md
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._stats import STATS, gradient_coefficients, merge
from ..bands import half_grid_tables
from ._spectra import base_is_prediction, make_hermitian
from .registry import Problem
from .triton_utils import (
    bin_gradient,
    bin_values,
    block_index,
    device_guard,
    finish_gradient,
    grid,
    input_args,
    load_pair,
    store_tile_stats,
)

BLOCK = 1024  # samples or bins per program (4 warps: 8 per thread)

# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _signals_kernel(
    x_ptr,  # logits (B, C, N), any float dtype
    t_ptr,  # integer label map (B, N), or dense target (B, C, N)
    base_ptr,  # base_is_x per slice, (B·C') bool
    base_out_ptr,  # out: signals[0], the base, (B, C', N) float32
    difference_out_ptr,  # out: signals[1], x − y, (B, C', N) float32
    C,  # channels
    offset,  # the first output channel: 1 leaves the background out
    N,  # samples per slice
    num_blocks,  # sample blocks per slice
    ignore_index,  # the label of ignored pixels (read with HAS_IGNORE only)
    ACTIVATION: tl.constexpr,  # ACTIVATION_CODES: none, SOFTMAX over the channels, SIGMOID
    LABEL_MAP: tl.constexpr,  # the target is a label map
    HAS_IGNORE: tl.constexpr,  # pixels labelled ignore_index are left out
    BLOCK: tl.constexpr,  # samples per program
):
    """signals[0] = base, signals[1] = x − y on BLOCK samples of one output slice."""
    # programs (b, pixel block, c'), c' fastest: those reading the same logits for the softmax run together
    pid = tl.program_id(0).to(tl.int64)
    channels = C - offset
    channel = pid % channels  # c' = c − offset
    b = pid // channels // num_blocks
    row = b * channels + channel  # the slice (b, c') in (B, C')
    pix = pid // channels % num_blocks * BLOCK + tl.arange(0, BLOCK)
    mask = pix < N
    x, y = load_pair(
        x_ptr, t_ptr, b, channel + offset, C, N, pix, mask, ignore_index, ACTIVATION, LABEL_MAP, HAS_IGNORE
    )
    base_is_x = tl.load(base_ptr + row) != 0
    tl.store(base_out_ptr + row * N + pix, tl.where(base_is_x, x, y), mask=mask)
    tl.store(difference_out_ptr + row * N + pix, x - y, mask=mask)  # exact to its own size


@triton.jit
def _load_bins(s_ptr, d_ptr, base_ptr, row, M, bins, valid):
    """S, D (real and imaginary parts, 0 out of range) at `bins` of slice `row`, and whether its
    base is x. S and D are real views (slices, M, 2): each is loaded as [BLOCK, 2] (contiguous)
    and split."""
    at = (row * M + bins)[:, None] * 2 + tl.arange(0, 2)[None, :]
    sr, si = tl.split(tl.load(s_ptr + at, mask=valid[:, None], other=0.0))
    dr, di = tl.split(tl.load(d_ptr + at, mask=valid[:, None], other=0.0))
    return sr, si, dr, di, tl.load(base_ptr + row) != 0


@triton.jit
def _tile(s_ptr, d_ptr, base_ptr, band_ptr, M, num_tiles, AMPLITUDE: tl.constexpr, BLOCK: tl.constexpr):
    """This program's slice `row` and tile of BLOCK bins: their band and X, Y, u, v, d (bin_values)."""
    row, tile = block_index(num_tiles)
    bins = tile * BLOCK + tl.arange(0, BLOCK)
    valid = bins < M
    sr, si, dr, di, base_is_x = _load_bins(s_ptr, d_ptr, base_ptr, row, M, bins, valid)
    xr, xi, yr, yi, u_re, v_re, d_re = bin_values(sr, si, dr, di, base_is_x, AMPLITUDE)
    band = tl.load(band_ptr + bins, mask=valid, other=0)
    return row, tile, bins, valid, band, xr, xi, yr, yi, u_re, v_re, d_re, di


@triton.jit
def _stats_kernel(
    s_ptr,  # S, the base's half spectra: real view (B·C', M, 2) float32
    d_ptr,  # D, x − y's half spectra: real view (B·C', M, 2) float32
    base_ptr,  # base_is_x per slice, (B·C') bool
    band_ptr,  # the band of each bin, (M,) int32
    herm_ptr,  # the Hermitian weight of each bin (1 or 2), float32
    out_ptr,  # out: STATS per tile, (B·C', num_tiles, K, 8) float32, zeros
    M,  # half-spectrum bins per slice
    K,  # bands
    num_tiles,  # tiles per slice
    AMPLITUDE: tl.constexpr,  # amplitude spectrum (else complex)
    BLOCK: tl.constexpr,  # bins per program
):
    """out[row, tile] (K, 8): the STATS of one tile of BLOCK bins of one slice, per band."""
    row, tile, bins, valid, band, _xr, xi, _yr, yi, u_re, v_re, d_re, di = _tile(
        s_ptr, d_ptr, base_ptr, band_ptr, M, num_tiles, AMPLITUDE, BLOCK
    )
    weight = tl.load(herm_ptr + bins, mask=valid, other=0.0)
    store_tile_stats(
        out_ptr + (row * num_tiles + tile) * K * 8, valid, band, weight, u_re, v_re, d_re, xi, yi, di, K, AMPLITUDE
    )


# _stats_kernel's parameters but for its own two pointers: `_launch_per_bin` launches both kernels
@triton.jit
def _grad_kernel(
    s_ptr,  # S, the base's half spectra: real view (B·C', M, 2) float32
    d_ptr,  # D, x − y's half spectra: real view (B·C', M, 2) float32
    base_ptr,  # base_is_x per slice, (B·C') bool
    band_ptr,  # the band of each bin, (M,) int32
    coefficients_ptr,  # COEFFICIENTS per slice and band, (B·C', K, 7) float32
    grad_ptr,  # out: G, the gradient of the half spectra of x: real view (B·C', M, 2) float32
    M,  # half-spectrum bins per slice
    K,  # bands
    num_tiles,  # tiles per slice
    AMPLITUDE: tl.constexpr,  # amplitude spectrum (else complex)
    BLOCK: tl.constexpr,  # bins per program
):
    """grad[row, bins] (interleaved): the loss's gradient w.r.t. X at BLOCK bins of one slice."""
    row, _tile_index, bins, valid, band, xr, xi, _yr, yi, u_re, v_re, d_re, di = _tile(
        s_ptr, d_ptr, base_ptr, band_ptr, M, num_tiles, AMPLITUDE, BLOCK
    )
    gr, gi = bin_gradient(coefficients_ptr + row * K * 7, band, valid, xr, xi, yi, di, u_re, v_re, d_re, AMPLITUDE)
    at = (row * M + bins)[:, None] * 2 + tl.arange(0, 2)[None, :]
    tl.store(grad_ptr + at, tl.join(gr, gi), mask=valid[:, None])


def _launch_per_bin(kernel, spectra, base_is_x, band, problem: Problem, **pointers) -> None:
    """`_stats_kernel` or `_grad_kernel` (`pointers`: its own two) over every slice, BLOCK bins a program."""
    slices, bins = base_is_x.numel(), band.numel()
    num_tiles = triton.cdiv(bins, BLOCK)
    kernel[grid(slices, num_tiles)](
        s_ptr=spectra[0],
        d_ptr=spectra[1],
        base_ptr=base_is_x,
        band_ptr=band,
        M=bins,
        K=problem.num_bands,
        num_tiles=num_tiles,
        AMPLITUDE=problem.spectrum == "amplitude",
        BLOCK=BLOCK,
        num_warps=4,
        **pointers,
    )


# ----------------------------------------------------------------------------------------------
# the backend contract (backends/__init__.py) for non-Parseval problems


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """[STATS (B, C', K, 8) float32, spectra (2, B, C', *half, 2) float32, base_is_x (B, C') bool]:
    the spectra are the real view of rfftn(signals) (S, then D), what the backward reads."""
    spatial = tuple(input.shape[2:])
    input, target = input.contiguous(), target.contiguous()
    batch, channels = input.shape[0], input.shape[1] - problem.offset
    slices, samples = batch * channels, math.prod(spatial)
    base_is_x = base_is_prediction(input, target, problem).contiguous()
    signals = torch.empty((2, batch, channels, *spatial), device=input.device, dtype=torch.float32)
    num_blocks = triton.cdiv(samples, BLOCK)
    with device_guard(input.device):
        _signals_kernel[grid(slices, num_blocks)](
            input,
            target,
            base_is_x,
            signals[0],
            signals[1],
            input.shape[1],
            problem.offset,
            samples,
            num_blocks,
            BLOCK=BLOCK,
            num_warps=4,
            **input_args(input, target, problem),
        )
        spectra = torch.fft.rfftn(signals, dim=tuple(range(3, signals.dim())), norm="ortho")
        del signals
        make_hermitian(spectra.flatten(0, 1), spatial[-1])  # (2·B, C', *half): its spatial axes from 2 on
        spectra = torch.view_as_real(spectra)
        tables = half_grid_tables(spatial, problem.num_bands, input.device)
        # zeros: a band that a tile does not touch is an empty part (count 0), which merge ignores
        partial = torch.zeros(
            (slices, triton.cdiv(tables.band.numel(), BLOCK), problem.num_bands, len(STATS)),
            device=input.device,
            dtype=torch.float32,
        )
        _launch_per_bin(
            _stats_kernel, spectra, base_is_x, tables.band32, problem, herm_ptr=tables.weight, out_ptr=partial
        )
    stats = merge(partial, 1).view(batch, channels, problem.num_bands, len(STATS))
    return [stats, spectra, base_is_x]


def band_stats_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    batch, channels, *spatial = input.shape
    channels -= problem.offset
    stats = input.new_empty((batch, channels, problem.num_bands, len(STATS)), dtype=torch.float32)
    spectra = input.new_empty((2, batch, channels, *spatial[:-1], spatial[-1] // 2 + 1, 2), dtype=torch.float32)
    return [stats, spectra, input.new_empty((batch, channels), dtype=torch.bool)]


def band_stats_backward(grad_stats, stats, input, target, saved, problem: Problem) -> torch.Tensor:
    spectra, base_is_x = (t.contiguous() for t in saved)
    spatial = tuple(input.shape[2:])
    input, target = input.contiguous(), target.contiguous()
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats).contiguous()  # (B, C', K, 7)
    grad_half = torch.empty(spectra.shape[1:-1], device=input.device, dtype=torch.complex64)
    grad = torch.empty(input.shape, device=input.device, dtype=torch.float32)
    grad[:, : problem.offset] = 0
    out = grad if input.dtype == torch.float32 else torch.empty_like(input)
    with device_guard(input.device):
        _launch_per_bin(
            _grad_kernel,
            spectra,
            base_is_x,
            tables.band32,
            problem,
            coefficients_ptr=coefficients,
            grad_ptr=torch.view_as_real(grad_half),
        )
        torch.fft.irfftn(
            grad_half, s=spatial, dim=tuple(range(2, input.dim())), norm="ortho", out=grad[:, problem.offset :]
        )
        del grad_half
        finish_gradient(input, target, grad, out, problem)
    return out
