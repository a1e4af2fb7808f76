"""Triton kernels for the amplitude and banded spectra: the DFT as matmuls (`tl.dot` on cos/sin
tables), fused end to end, for 2D slices up to 512² and 3D up to 128³ (dft_tiles.py).

Forward: `_forward_kernel`, one program per (slice, frequency tile): activation, one-hot and ignore
mask in registers, the tile's half spectra of the base (x or y) and of x − y, then the 8 STATS of
each band the tile touches → (slices, tiles, K, 8), merged by _stats.merge. Saves only base_is_x.
Backward: `_backward_kernel` recomputes the tile's spectra, forms each bin's gradient from its
band's COEFFICIENTS and atomic-adds the tile's share of the inverse DFT into a float32 buffer;
triton_utils.finish_gradient applies the ignore mask and the activation's Jacobian.

Design and figures: docs/triton-dft.md
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._cache import TableCache
from .._stats import STATS, gradient_coefficients, merge
from ..bands import half_grid_tables
from ._spectra import base_is_prediction
from .dft_tiles import plan_tiles
from .registry import Problem
from .triton_utils import (
    bin_gradient,
    bin_values,
    device_guard,
    finish_gradient,
    input_args,
    load_pair,
    store_tile_stats,
)

# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _plane_spectrum(
    x_ptr,
    t_ptr,
    tw_h,
    tw_w,
    b,
    c,
    C,
    N,
    d,
    H,
    W,
    ignore_index,
    base_is_x,
    kh,
    kw,
    ACTIVATION: tl.constexpr,
    LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    PRECISION: tl.constexpr,
    BKH: tl.constexpr,
    BKW: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """conj of the 2D ortho DFT of plane d of the base and of x − y on the (kh, kw) tile: 4 planes [BKH, BKW]."""
    kh_ok = kh < H
    kw_ok = kw < W // 2 + 1
    sr = tl.zeros((BKH, BKW), tl.float32)
    si = tl.zeros((BKH, BKW), tl.float32)
    dr = tl.zeros((BKH, BKW), tl.float32)
    di = tl.zeros((BKH, BKW), tl.float32)
    for h0 in range(0, H, BH):
        rows = h0 + tl.arange(0, BH)
        rows_ok = rows < H
        tsr = tl.zeros((BH, BKW), tl.float32)
        tsi = tl.zeros((BH, BKW), tl.float32)
        tdr = tl.zeros((BH, BKW), tl.float32)
        tdi = tl.zeros((BH, BKW), tl.float32)
        for w0 in range(0, W, BW):
            cols = w0 + tl.arange(0, BW)
            cols_ok = cols < W
            pix = d * H * W + rows[:, None] * W + cols[None, :]
            mask = rows_ok[:, None] & cols_ok[None, :]
            x, y = load_pair(x_ptr, t_ptr, b, c, C, N, pix, mask, ignore_index, ACTIVATION, LABEL_MAP, HAS_IGNORE)
            base = tl.where(base_is_x, x, y)
            difference = x - y  # exact to its own size, not a difference of two transforms
            # table[w, kw]: the full symmetric W×W matrix, only its first Wh columns are read
            at_w = cols[:, None] * W + kw[None, :]
            ok_w = cols_ok[:, None] & kw_ok[None, :]
            cos_w = tl.load(tw_w + at_w, mask=ok_w, other=0.0)
            sin_w = tl.load(tw_w + W * W + at_w, mask=ok_w, other=0.0)
            tsr = tl.dot(base, cos_w, tsr, input_precision=PRECISION)
            tsi = tl.dot(base, sin_w, tsi, input_precision=PRECISION)
            tdr = tl.dot(difference, cos_w, tdr, input_precision=PRECISION)
            tdi = tl.dot(difference, sin_w, tdi, input_precision=PRECISION)
        at_h = kh[:, None] * H + rows[None, :]
        ok_h = kh_ok[:, None] & rows_ok[None, :]
        cos_h = tl.load(tw_h + at_h, mask=ok_h, other=0.0)
        sin_h = tl.load(tw_h + H * H + at_h, mask=ok_h, other=0.0)
        # (cos + i·sin) @ (tr + i·ti)
        sr = tl.dot(cos_h, tsr, sr, input_precision=PRECISION)
        sr = tl.dot(-sin_h, tsi, sr, input_precision=PRECISION)
        si = tl.dot(cos_h, tsi, si, input_precision=PRECISION)
        si = tl.dot(sin_h, tsr, si, input_precision=PRECISION)
        dr = tl.dot(cos_h, tdr, dr, input_precision=PRECISION)
        dr = tl.dot(-sin_h, tdi, dr, input_precision=PRECISION)
        di = tl.dot(cos_h, tdi, di, input_precision=PRECISION)
        di = tl.dot(sin_h, tdr, di, input_precision=PRECISION)
    return sr, si, dr, di


@triton.jit
def _spectrum_tile(
    x_ptr,
    t_ptr,
    tw_d,
    tw_h,
    tw_w,
    b,
    c,
    C,
    D,
    H,
    W,
    ignore_index,
    base_is_x,
    kd,
    kh,
    kw,
    ACTIVATION: tl.constexpr,
    LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    PRECISION: tl.constexpr,
    THREE_D: tl.constexpr,
    BKD: tl.constexpr,
    BKH: tl.constexpr,
    BKW: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
):
    """conj(S), conj(D) of the base and of x − y on the (kd, kh, kw) tile: 4 planes [BKD, BKH, BKW]
    (BKD = 1 in 2D)."""
    sr = tl.zeros((BKD, BKH, BKW), tl.float32)
    si = tl.zeros((BKD, BKH, BKW), tl.float32)
    dr = tl.zeros((BKD, BKH, BKW), tl.float32)
    di = tl.zeros((BKD, BKH, BKW), tl.float32)
    kd_ok = kd < D
    # 2D: one plane, a loop of one step that the compiler removes
    for d in range(D if THREE_D else 1):
        zsr, zsi, zdr, zdi = _plane_spectrum(
            x_ptr,
            t_ptr,
            tw_h,
            tw_w,
            b,
            c,
            C,
            D * H * W,
            d,
            H,
            W,
            ignore_index,
            base_is_x,
            kh,
            kw,
            ACTIVATION,
            LABEL_MAP,
            HAS_IGNORE,
            PRECISION,
            BKH,
            BKW,
            BH,
            BW,
        )
        if THREE_D:  # the D stage, elementwise: (cos + i·sin)_D[kd tile, d] · Z
            cos_d = tl.load(tw_d + kd * D + d, mask=kd_ok, other=0.0)[:, None, None]
            sin_d = tl.load(tw_d + D * D + kd * D + d, mask=kd_ok, other=0.0)[:, None, None]
            sr += cos_d * zsr[None, :, :] - sin_d * zsi[None, :, :]
            si += cos_d * zsi[None, :, :] + sin_d * zsr[None, :, :]
            dr += cos_d * zdr[None, :, :] - sin_d * zdi[None, :, :]
            di += cos_d * zdi[None, :, :] + sin_d * zdr[None, :, :]
        else:
            sr, si, dr, di = zsr[None, :, :], zsi[None, :, :], zdr[None, :, :], zdi[None, :, :]
    return sr, si, dr, di


@triton.jit
def _tile_setup(base_ptr, C, offset, tiles_h, tiles_w, BKD: tl.constexpr, BKH: tl.constexpr, BKW: tl.constexpr):
    """This program's slice (b, c), its frequency index vectors, and whether the slice's base signal is x."""
    slice_id = tl.program_id(0)
    tile = tl.program_id(1)
    b = slice_id // (C - offset)
    c = slice_id % (C - offset) + offset
    kd = (tile // (tiles_h * tiles_w)) * BKD + tl.arange(0, BKD)
    kh = (tile // tiles_w) % tiles_h * BKH + tl.arange(0, BKH)
    kw = tile % tiles_w * BKW + tl.arange(0, BKW)
    base_is_x = tl.load(base_ptr + slice_id) != 0
    return slice_id, tile, b, c, kd, kh, kw, base_is_x


@triton.jit
def _tile_bins(band_ptr, herm_ptr, D, H, W, kd, kh, kw):
    """The tile's bins in range, and the band and Hermitian weight of each (weight 0 out of range).
    Loaded after the transform: tile-sized tables held through it would spill registers."""
    half = W // 2 + 1
    valid = (kd < D)[:, None, None] & (kh < H)[None, :, None] & (kw < half)[None, None, :]
    bins = (kd[:, None, None] * H + kh[None, :, None]) * half + kw[None, None, :]
    band = tl.load(band_ptr + bins, mask=valid, other=0)
    weight = tl.load(herm_ptr + bins, mask=valid, other=0.0)
    return valid, band, weight


@triton.jit
def _forward_kernel(
    x_ptr,  # logits (B, C, *S), any float dtype
    t_ptr,  # integer label map (B, *S), or dense target (B, C, *S)
    tw_d,  # twiddles of the D axis, (2, D, D) float32: cos, sin (`_twiddles`)
    tw_h,  # twiddles of the H axis, (2, H, H) float32
    tw_w,  # twiddles of the W axis, (2, W, W) float32
    band_ptr,  # the band of each half-spectrum bin, (D, H, W//2 + 1) int32
    herm_ptr,  # the Hermitian weight of each bin (1 or 2), float32
    base_ptr,  # base_is_x per slice, (B·C') bool
    out_ptr,  # out: STATS per tile, (B·C', num_tiles, K, 8) float32, zeros
    C,  # channels
    offset,  # the first output channel: 1 leaves the background out
    D,  # planes (1 in 2D)
    H,  # rows
    W,  # columns
    K,  # bands
    ignore_index,  # the label of ignored pixels (read with HAS_IGNORE only)
    tiles_h,  # frequency tiles along H
    tiles_w,  # frequency tiles along the half W axis
    num_tiles,  # frequency tiles per slice
    ACTIVATION: tl.constexpr,  # ACTIVATION_CODES: none, SOFTMAX over the channels, SIGMOID
    LABEL_MAP: tl.constexpr,  # the target is a label map
    HAS_IGNORE: tl.constexpr,  # pixels labelled ignore_index are left out
    AMPLITUDE: tl.constexpr,  # amplitude spectrum (else complex)
    PRECISION: tl.constexpr,  # tl.dot's input_precision: "tf32x3" (float32 inputs) or "tf32"
    THREE_D: tl.constexpr,  # a 3D slice: the D stage runs
    BKD: tl.constexpr,  # frequency tile: planes (1 in 2D)
    BKH: tl.constexpr,  # frequency tile: rows
    BKW: tl.constexpr,  # frequency tile: half-spectrum columns
    BH: tl.constexpr,  # pixel rows per loop step
    BW: tl.constexpr,  # pixel columns per loop step
):
    slice_id, tile, b, c, kd, kh, kw, base_is_x = _tile_setup(base_ptr, C, offset, tiles_h, tiles_w, BKD, BKH, BKW)
    sr, si, dr, di = _spectrum_tile(
        x_ptr,
        t_ptr,
        tw_d,
        tw_h,
        tw_w,
        b,
        c,
        C,
        D,
        H,
        W,
        ignore_index,
        base_is_x,
        kd,
        kh,
        kw,
        ACTIVATION,
        LABEL_MAP,
        HAS_IGNORE,
        PRECISION,
        THREE_D,
        BKD,
        BKH,
        BKW,
        BH,
        BW,
    )
    _xr, xi, _yr, yi, u_re, v_re, d_re = bin_values(sr, si, dr, di, base_is_x, AMPLITUDE)
    valid, band, weight = _tile_bins(band_ptr, herm_ptr, D, H, W, kd, kh, kw)
    out = out_ptr + (slice_id.to(tl.int64) * num_tiles + tile) * K * 8
    store_tile_stats(out, valid, band, weight, u_re, v_re, d_re, xi, yi, di, K, AMPLITUDE)


# _forward_kernel's parameters and first lines again: the backward recomputes the tile's spectra
# (nothing is saved, see the module docstring). A kernel's parameters are its launch signature, and
# the helpers take them on one by one: triton >= 3.0 (this package's floor) has no struct arguments
# that could bundle them.
@triton.jit
def _backward_kernel(
    x_ptr,  # logits (B, C, *S), any float dtype
    t_ptr,  # integer label map (B, *S), or dense target (B, C, *S)
    tw_d,  # twiddles of the D axis, (2, D, D) float32: cos, sin (`_twiddles`)
    tw_h,  # twiddles of the H axis, (2, H, H) float32
    tw_w,  # twiddles of the W axis, (2, W, W) float32
    band_ptr,  # the band of each half-spectrum bin, (D, H, W//2 + 1) int32
    herm_ptr,  # the Hermitian weight of each bin (1 or 2), float32
    base_ptr,  # base_is_x per slice, (B·C') bool
    coefficients_ptr,  # COEFFICIENTS per slice and band, (B·C', K, 7) float32
    acc_ptr,  # out: the gradient of the prediction, (B, C, *S) float32, zeros (atomic adds)
    C,  # channels
    offset,  # the first output channel: 1 leaves the background out
    D,  # planes (1 in 2D)
    H,  # rows
    W,  # columns
    K,  # bands
    ignore_index,  # the label of ignored pixels (read with HAS_IGNORE only)
    tiles_h,  # frequency tiles along H
    tiles_w,  # frequency tiles along the half W axis
    ACTIVATION: tl.constexpr,  # ACTIVATION_CODES: none, SOFTMAX over the channels, SIGMOID
    LABEL_MAP: tl.constexpr,  # the target is a label map
    HAS_IGNORE: tl.constexpr,  # pixels labelled ignore_index are left out
    AMPLITUDE: tl.constexpr,  # amplitude spectrum (else complex)
    PRECISION: tl.constexpr,  # tl.dot's input_precision: "tf32x3" (float32 inputs) or "tf32"
    THREE_D: tl.constexpr,  # a 3D slice: the D stage runs
    BKD: tl.constexpr,  # frequency tile: planes (1 in 2D)
    BKH: tl.constexpr,  # frequency tile: rows
    BKW: tl.constexpr,  # frequency tile: half-spectrum columns
    BH: tl.constexpr,  # pixel rows per loop step
    BW: tl.constexpr,  # pixel columns per loop step
):
    slice_id, _tile, b, c, kd, kh, kw, base_is_x = _tile_setup(base_ptr, C, offset, tiles_h, tiles_w, BKD, BKH, BKW)
    sr, si, dr, di = _spectrum_tile(
        x_ptr,
        t_ptr,
        tw_d,
        tw_h,
        tw_w,
        b,
        c,
        C,
        D,
        H,
        W,
        ignore_index,
        base_is_x,
        kd,
        kh,
        kw,
        ACTIVATION,
        LABEL_MAP,
        HAS_IGNORE,
        PRECISION,
        THREE_D,
        BKD,
        BKH,
        BKW,
        BH,
        BW,
    )
    xr, xi, _yr, yi, u_re, v_re, d_re = bin_values(sr, si, dr, di, base_is_x, AMPLITUDE)
    valid, band, weight = _tile_bins(band_ptr, herm_ptr, D, H, W, kd, kh, kw)
    # conj(G) per bin (torch_backend._spectral_backward's formulas on the conj spectra), Hermitian weight folded in
    gr, gi = bin_gradient(
        coefficients_ptr + slice_id.to(tl.int64) * K * 7, band, valid, xr, xi, yi, di, u_re, v_re, d_re, AMPLITUDE
    )
    gr *= weight
    gi *= weight
    # grad[n] = Re Σ_k h_k·conj(G_k)·e^{-2πi k·n/N}/√N: D axis, then H, then W
    acc = acc_ptr + (b.to(tl.int64) * C + c) * D * H * W
    kd_ok = kd < D
    kh_ok = kh < H
    kw_ok = kw < W // 2 + 1
    for d in range(D):
        if THREE_D:
            cos_d = tl.load(tw_d + kd * D + d, mask=kd_ok, other=0.0)[:, None, None]
            sin_d = tl.load(tw_d + D * D + kd * D + d, mask=kd_ok, other=0.0)[:, None, None]
            zr = tl.sum(gr * cos_d + gi * sin_d, axis=0)
            zi = tl.sum(gi * cos_d - gr * sin_d, axis=0)
        else:
            zr = tl.sum(gr, axis=0)
            zi = tl.sum(gi, axis=0)
        for h0 in range(0, H, BH):
            rows = h0 + tl.arange(0, BH)
            rows_ok = rows < H
            at_h = rows[:, None] * H + kh[None, :]
            ok_h = rows_ok[:, None] & kh_ok[None, :]
            cos_h = tl.load(tw_h + at_h, mask=ok_h, other=0.0)
            sin_h = tl.load(tw_h + H * H + at_h, mask=ok_h, other=0.0)
            # (cos − i·sin) @ (zr + i·zi)
            hr = tl.dot(cos_h, zr, input_precision=PRECISION)
            hr = tl.dot(sin_h, zi, hr, input_precision=PRECISION)
            hi = tl.dot(cos_h, zi, input_precision=PRECISION)
            hi = tl.dot(-sin_h, zr, hi, input_precision=PRECISION)
            for w0 in range(0, W, BW):
                cols = w0 + tl.arange(0, BW)
                cols_ok = cols < W
                at_w = cols[None, :] * W + kw[:, None]
                ok_w = kw_ok[:, None] & cols_ok[None, :]
                cos_w = tl.load(tw_w + at_w, mask=ok_w, other=0.0)
                sin_w = tl.load(tw_w + W * W + at_w, mask=ok_w, other=0.0)
                # Re((hr + i·hi) @ (cos − i·sin))
                part = tl.dot(hr, cos_w, input_precision=PRECISION)
                part = tl.dot(hi, sin_w, part, input_precision=PRECISION)
                pix = d * H * W + rows[:, None] * W + cols[None, :]
                # relaxed: only the sum matters, no other memory is ordered by these adds (the default,
                # acq_rel, fences every one)
                tl.atomic_add(acc + pix, part, mask=rows_ok[:, None] & cols_ok[None, :], sem="relaxed")


# ----------------------------------------------------------------------------------------------
# host side: tables, tiling, launches


@TableCache
def _twiddles(n: int, device: torch.device) -> torch.Tensor:
    """(2, n, n) float32: cos and sin of 2π·(k·m mod n)/n, over √n (ortho); symmetric in k, m.

    Built from the angles up to π and mirrored (cos(2π − a) = cos a, sin(2π − a) = −sin a
    exactly), so that the transforms of bins k and −k are exact conjugates: a band of mirror
    pairs then sees exactly equal amplitudes (r = 1, SPEC §4)."""
    k = torch.arange(n, dtype=torch.int64)
    index = torch.outer(k, k) % n  # exact integer reduction
    folded = torch.minimum(index, n - index).double() * (2 * math.pi / n)
    sign = torch.where(index > n - index, -1.0, 1.0).double()
    return (torch.stack([torch.cos(folded), sign * torch.sin(folded)]) / math.sqrt(n)).float().to(device)


def _precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"  # docs/triton-dft.md, Precision


def _kernel_args(input, target, base_is_x, problem: Problem) -> tuple[tuple[int, int], dict]:
    """The grid (slices, tiles per slice) and every argument `_forward_kernel` and `_backward_kernel`
    share (all but their own output and input pointers, and the forward's num_tiles)."""
    spatial = tuple(input.shape[2:])
    plan = plan_tiles(spatial)
    depth, height, width = plan.dims
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    args = dict(
        x_ptr=input,
        t_ptr=target,
        tw_d=_twiddles(depth, input.device),
        tw_h=_twiddles(height, input.device),
        tw_w=_twiddles(width, input.device),
        band_ptr=tables.band32,
        herm_ptr=tables.weight,
        base_ptr=base_is_x.contiguous(),
        C=input.shape[1],
        offset=problem.offset,
        D=depth,
        H=height,
        W=width,
        K=problem.num_bands,
        tiles_h=plan.tiles[1],
        tiles_w=plan.tiles[2],
        AMPLITUDE=problem.spectrum == "amplitude",
        PRECISION=_precision(input.dtype),
        THREE_D=plan.three_d,
        num_warps=8,
        num_stages=1,
        **plan.blocks._asdict(),
        **input_args(input, target, problem),
    )
    slices = input.shape[0] * (input.shape[1] - problem.offset)
    return (slices, plan.num_tiles), args


# ----------------------------------------------------------------------------------------------
# the backend contract (backends/__init__.py) for non-Parseval problems


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """[STATS (B, C', K, 8) float32, base_is_x (B, C') bool]: each tile's statistics merged over tiles."""
    input, target = input.contiguous(), target.contiguous()
    base_is_x = base_is_prediction(input, target, problem)
    grid, args = _kernel_args(input, target, base_is_x, problem)
    # zeros: a band that a tile does not touch is an empty part (count 0), which merge ignores
    partial = torch.zeros((*grid, problem.num_bands, len(STATS)), device=input.device, dtype=torch.float32)
    with device_guard(input.device):
        _forward_kernel[grid](out_ptr=partial, num_tiles=grid[1], **args)
    batch, channels = input.shape[0], input.shape[1] - problem.offset
    return [merge(partial, 1).view(batch, channels, problem.num_bands, len(STATS)), base_is_x]


def band_stats_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    batch, channels = input.shape[0], input.shape[1] - problem.offset
    stats = input.new_empty((batch, channels, problem.num_bands, len(STATS)), dtype=torch.float32)
    return [stats, input.new_empty((batch, channels), dtype=torch.bool)]


def band_stats_backward(grad_stats, stats, input, target, saved, problem: Problem) -> torch.Tensor:
    (base_is_x,) = saved
    input, target = input.contiguous(), target.contiguous()
    coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats).contiguous()  # (B, C', K, 7)
    grid, args = _kernel_args(input, target, base_is_x, problem)
    acc = torch.zeros(input.shape, device=input.device, dtype=torch.float32)
    out = acc if input.dtype == torch.float32 else torch.empty_like(input)
    with device_guard(input.device):
        _backward_kernel[grid](coefficients_ptr=coefficients, acc_ptr=acc, **args)
        finish_gradient(input, target, acc, out, problem)
    return out
