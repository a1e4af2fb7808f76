"""Triton kernels around torch.fft (cuFFT on a GPU) for the amplitude and banded spectra.

triton_backend.transform_path sends a problem here or to triton_dft.py. The DFT-as-matmul
kernels there keep the spectra on chip but cost ~1000× an FFT's FLOPs at 128³ and are checked
up to 512² and 128³ only; this path does the transform in O(N log N) for every size and rank
(odd and prime sides included, batched over all slices) and fuses everything around it, the
same shape as the cuda backend (cuda_backend.py):

    _signals_kernel     logits, target → signals (2, B, C', *S) float32: [0] the base, x or y per
                        slice (`base_is_prediction`, _spectra.py), [1] x − y. Activation (softmax
                        over C, sigmoid), one-hot of a label map and ignore mask in registers
                        (triton_dft._load_pair), the background channel left out.
    torch.fft.rfftn     both signals of every slice in one call, ortho; then `make_hermitian`.
    _stats_kernel       per tile of BLOCK half-spectrum bins of one slice: X, Y, u, v, d
                        (triton_dft._bin_values) and, for every band the tile touches, its 8 STATS
                        (_stats.py) with the Hermitian weights folded in, centred on the tile's own
                        means in two passes over the registers; torch merges the tiles (_stats.merge:
                        Chan's update, nothing cancels).
backward:
    _grad_kernel        per bin, the gradient G of the half spectrum of x from its band's
                        COEFFICIENTS (gathered by the int32 band table) and X, Y, u, v, d recomputed
                        from the saved spectra: torch_backend._spectral_backward's per-bin formulas,
                        unweighted, because irfftn treats the half spectrum as the full Hermitian
                        one (the mirror bins' share is its own).
    torch.fft.irfftn    into a float32 (B, C, *S) buffer whose background channel is 0.
    triton_dft._finish_kernel   ignore mask, activation Jacobian, the input's dtype.

This module's kernels run on a 1-D grid (only grid axis 0 may exceed 65535) with int64
offsets; _finish_kernel's grid is (B, pixel blocks), its block grown with N so that axis stays
within 65535. No kernel uses atomics, and torch's FFTs are deterministic: the result does not
depend on the order programs run in, so this path also serves
`torch.use_deterministic_algorithms(True)` on a GPU.

Memory, per slice (b, c') of N samples and M = N/W·(W//2 + 1) half-spectrum bins:
- forward: the signals, 8·N bytes, freed after the transform; the spectra, 16·M bytes, saved
  for the backward with `base_is_x` (recomputing them would redo the forward's prologue and
  transform, about the forward's whole cost); the tiles' STATS, 32·K bytes per BLOCK bins
  (zero-initialised: a band that a tile does not touch is an empty part), and merge's
  temporaries of their size.
- backward: G, 8·M bytes (and cuFFT's copy of it: c2r overwrites its input); the float32
  (B, C, *S) gradient buffer (irfftn's `out=`, which may go through a temporary of its size),
  which for float32 inputs is the returned gradient (finished in place); for float16/bfloat16
  the returned gradient besides.

Precision: float32 throughout, whatever the input's dtype; the FFTs' rounding is float32's
O(ε·log N) (the float32 torch backend does the same transforms).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._options import ACTIVATION_CODES, Problem, is_label_map
from .._stats import STATS, gradient_coefficients, merge
from ..bands import half_grid_tables
from ._spectra import base_is_prediction, make_hermitian
from .triton_dft import (
    _bin_gradient,
    _bin_values,
    _device_guard,
    _finish_kernel,
    _ignore_value,
    _load_pair,
    _store_tile_stats,
)
from .triton_kernels import _block, _grid

BLOCK = 1024  # samples or bins per program (4 warps: 8 per thread)
FINISH_BLOCK = 1024  # at least: _finish_kernel's pixel blocks are grid axis 1 (≤ 65535 of them)

# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _signals_kernel(
    x_ptr,
    t_ptr,
    base_ptr,  # logits (B, C, N), target, base_is_x (B, C')
    base_out_ptr,
    difference_out_ptr,  # signals[0], signals[1]: (B, C', N) float32
    C,
    offset,
    N,
    num_blocks,
    ignore_index,  # classes, first output channel, samples, blocks
    ACT: tl.constexpr,
    LABEL: tl.constexpr,
    IGNORE: tl.constexpr,
    BLOCK: tl.constexpr,
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
    x, y = _load_pair(x_ptr, t_ptr, b, channel + offset, C, N, pix, mask, ignore_index, ACT, LABEL, IGNORE)
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
    """This program's slice `row` and tile of BLOCK bins: their band and X, Y, u, v, d (_bin_values)."""
    row, tile = _block(num_tiles)
    bins = tile * BLOCK + tl.arange(0, BLOCK)
    valid = bins < M
    sr, si, dr, di, base_is_x = _load_bins(s_ptr, d_ptr, base_ptr, row, M, bins, valid)
    xr, xi, yr, yi, u_re, v_re, d_re = _bin_values(sr, si, dr, di, base_is_x, AMPLITUDE)
    band = tl.load(band_ptr + bins, mask=valid, other=0)
    return row, tile, bins, valid, band, xr, xi, yr, yi, u_re, v_re, d_re, di


@triton.jit
def _stats_kernel(
    s_ptr,
    d_ptr,
    base_ptr,  # S, D real views (B·C', M, 2), base_is_x (B·C')
    band_ptr,
    herm_ptr,  # per bin: band (int32), Hermitian weight (1 or 2)
    out_ptr,  # (B·C', num_tiles, K, 8) float32, zeros
    M,
    K,
    num_tiles,  # bins per slice, bands, tiles per slice
    AMPLITUDE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[row, tile] (K, 8): the STATS of one tile of BLOCK bins of one slice, per band."""
    row, tile, bins, valid, band, _xr, xi, _yr, yi, u_re, v_re, d_re, di = _tile(
        s_ptr, d_ptr, base_ptr, band_ptr, M, num_tiles, AMPLITUDE, BLOCK
    )
    weight = tl.load(herm_ptr + bins, mask=valid, other=0.0)
    _store_tile_stats(
        out_ptr + (row * num_tiles + tile) * K * 8, valid, band, weight, u_re, v_re, d_re, xi, yi, di, K, AMPLITUDE
    )


@triton.jit
def _grad_kernel(
    s_ptr,
    d_ptr,
    base_ptr,  # S, D real views (B·C', M, 2), base_is_x (B·C')
    band_ptr,
    coefficients_ptr,  # band per bin (int32), COEFFICIENTS (B·C', K, 7)
    grad_ptr,  # G, real view (B·C', M, 2)
    M,
    K,
    num_tiles,  # bins per slice, bands, tiles per slice
    AMPLITUDE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad[row, bins] (interleaved): the loss's gradient w.r.t. X at BLOCK bins of one slice."""
    row, _tile_index, bins, valid, band, xr, xi, _yr, yi, u_re, v_re, d_re, di = _tile(
        s_ptr, d_ptr, base_ptr, band_ptr, M, num_tiles, AMPLITUDE, BLOCK
    )
    gr, gi = _bin_gradient(coefficients_ptr + row * K * 7, band, valid, xr, xi, yi, di, u_re, v_re, d_re, AMPLITUDE)
    at = (row * M + bins)[:, None] * 2 + tl.arange(0, 2)[None, :]
    tl.store(grad_ptr + at, tl.join(gr, gi), mask=valid[:, None])


# ----------------------------------------------------------------------------------------------
# the backend contract (backends/__init__.py) for non-Parseval problems


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """[STATS (B, C', K, 8) float32, spectra (2, B, C', *half, 2) float32, base_is_x (B, C') bool]:
    the spectra are the real view of rfftn(signals) (S, then D), what the backward reads."""
    spatial = tuple(input.shape[2:])
    input, target = input.contiguous(), target.contiguous()
    batch, channels = input.shape[0], input.shape[1] - problem.offset
    slices, samples = batch * channels, math.prod(spatial)
    label_map = is_label_map(input, target)
    base_is_x = base_is_prediction(input, target, problem).contiguous()
    signals = torch.empty((2, batch, channels, *spatial), device=input.device, dtype=torch.float32)
    num_blocks = triton.cdiv(samples, BLOCK)
    with _device_guard(input.device):
        _signals_kernel[_grid(slices, num_blocks)](
            input,
            target,
            base_is_x,
            signals[0],
            signals[1],
            input.shape[1],
            problem.offset,
            samples,
            num_blocks,
            _ignore_value(problem),
            ACT=ACTIVATION_CODES[problem.activation],
            LABEL=label_map,
            IGNORE=label_map and problem.ignore_index is not None,
            BLOCK=BLOCK,
            num_warps=4,
        )
        spectra = torch.fft.rfftn(signals, dim=tuple(range(3, signals.dim())), norm="ortho")
        del signals
        make_hermitian(spectra.flatten(0, 1), spatial[-1])  # (2·B, C', *half): its spatial axes from 2 on
        spectra = torch.view_as_real(spectra)
        tables = half_grid_tables(spatial, problem.num_bands, input.device)
        bins = tables.band.numel()
        num_tiles = triton.cdiv(bins, BLOCK)
        # zeros: a band that a tile does not touch is an empty part (count 0), which merge ignores
        partial = torch.zeros(
            (slices, num_tiles, problem.num_bands, len(STATS)), device=input.device, dtype=torch.float32
        )
        _stats_kernel[_grid(slices, num_tiles)](
            spectra[0],
            spectra[1],
            base_is_x,
            tables.band32,
            tables.weight,
            partial,
            bins,
            problem.num_bands,
            num_tiles,
            AMPLITUDE=problem.spectrum == "amplitude",
            BLOCK=BLOCK,
            num_warps=4,
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
    batch, classes = input.shape[:2]
    slices, samples = batch * (classes - problem.offset), math.prod(spatial)
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    bins = tables.band.numel()
    num_tiles = triton.cdiv(bins, BLOCK)
    coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats).contiguous()  # (B, C', K, 7)
    grad_half = torch.empty(spectra.shape[1:-1], device=input.device, dtype=torch.complex64)
    grad = torch.empty(input.shape, device=input.device, dtype=torch.float32)
    grad[:, : problem.offset] = 0
    out = grad if input.dtype == torch.float32 else torch.empty_like(input)
    label_map = is_label_map(input, target)
    finish_block = max(FINISH_BLOCK, triton.next_power_of_2(triton.cdiv(samples, 65535)))
    with _device_guard(input.device):
        _grad_kernel[_grid(slices, num_tiles)](
            spectra[0],
            spectra[1],
            base_is_x,
            tables.band32,
            coefficients,
            torch.view_as_real(grad_half),
            bins,
            problem.num_bands,
            num_tiles,
            AMPLITUDE=problem.spectrum == "amplitude",
            BLOCK=BLOCK,
            num_warps=4,
        )
        torch.fft.irfftn(
            grad_half, s=spatial, dim=tuple(range(2, input.dim())), norm="ortho", out=grad[:, problem.offset :]
        )
        del grad_half
        _finish_kernel[(batch, triton.cdiv(samples, finish_block))](
            input,
            target,
            grad,
            out,
            classes,
            samples,
            _ignore_value(problem),
            ACT=ACTIVATION_CODES[problem.activation],
            IGNORE=label_map and problem.ignore_index is not None,
            BLOCK=finish_block,
        )
    return out
