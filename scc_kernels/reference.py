"""The executable definition: SPEC §3, step by step, in torch.fft with autograd.

Forward: full complex spectra, a 0/1 mask per band, two-pass centred sums; slow on purpose.
Backward: autograd, in every mode. Every other backend is tested against it in float64.
"""

from __future__ import annotations

import torch

from ._distributed import gather_batches
from ._options import SCCOptions, checked_labels, compute_dtype, is_label_map
from ._stats import weighted_band_mean
from .bands import band_index, mirror


def band_weighted_r(input: torch.Tensor, target: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    """Band-weighted r, shape (B, C') or (C',) with `batch=True`, for prepared arguments."""
    dtype = compute_dtype(input.dtype)
    num_classes = input.shape[1]
    spatial = tuple(input.shape[2:])
    spatial_dims = tuple(range(2, input.dim()))

    # 1. activation; target as float, one-hot for a label map
    x = input.to(dtype)
    if opts.activation == "softmax":
        x = torch.softmax(x, dim=1)
    elif opts.activation == "sigmoid":
        x = torch.sigmoid(x)
    label_map = is_label_map(input, target)
    if label_map:
        labels = checked_labels(target, num_classes, opts.ignore_index)
        valid = torch.ones_like(labels, dtype=torch.bool)
        if opts.ignore_index is not None:
            valid = labels != opts.ignore_index
        classes = torch.arange(num_classes, device=labels.device).view(num_classes, *(1 for _ in spatial))
        y = (labels.unsqueeze(1) == classes).to(dtype)  # one-hot (F.one_hot's range check fails under vmap)
        # 2. ignored positions are zero in prediction and target
        valid = valid.unsqueeze(1)
        x = x * valid
        y = y * valid
    else:
        y = target.to(dtype)

    # 3. drop the background channel
    if not opts.include_background:
        x, y = x[:, 1:], y[:, 1:]
    if opts.batch and opts.sync_batch:  # r over every rank's batch: gather the slices themselves
        x, y = gather_batches(x, opts.process_group), gather_batches(y, opts.process_group)
        if x.numel() == 0:  # every rank's batch is empty: no bins, r = 1 (SPEC §3 step 6); fftn refuses it
            r: torch.Tensor = torch.ones(x.shape[1], dtype=dtype, device=x.device) + 0 * x.sum()
            return r

    # 4. full complex spectra, made exactly Hermitian: an FFT's rounding (which depends on the
    # CPU's instruction set) leaves mirror bins' amplitudes an ulp apart, and a band of mirror
    # pairs then loses r = 1 at large magnitudes (SPEC §3 step 4)
    X, Y = (_hermitian(torch.fft.fftn(z, dim=spatial_dims, norm="ortho"), spatial_dims) for z in (x, y))
    if opts.spectrum == "amplitude":
        # |X| of a conjugate pair can still differ by an ulp: torch's complex abs takes another
        # route in its vector lanes than in the remainder (seen at 1e15 magnitudes in float64, with
        # a band of one mirror pair: r = 0.1 instead of 1); the same projection (of a real tensor:
        # the mirror average) makes them equal
        u, v = (_hermitian(Z.abs(), spatial_dims) for Z in (X, Y))
    else:
        u, v = X, Y

    # 5.-6. one r per band, per slice (b, c) or per class when batch=True: sums over the bins of
    # the band (a 0/1 mask, so that shapes never depend on data: torch.compile traces this too)
    bins = band_index(spatial, opts.num_bands).to(input.device)
    dims = (0, *spatial_dims) if opts.batch else spatial_dims
    per_band = [_correlation(u, v, (bins == band).to(dtype), dims, opts.eps) for band in range(opts.num_bands)]
    r = torch.stack(per_band, dim=-1)

    # 7. band weights
    return weighted_band_mean(r, opts)


def _hermitian(Z: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The Hermitian part of Z over `dims`: Z itself for an exact transform of a real signal."""
    return (Z + mirror(Z, dims).conj()) / 2


def _correlation(
    u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...], eps: float
) -> torch.Tensor:
    """r over the bins where `mask` is 1, summed over `dims`; 1 for an empty band, or where nothing
    varies and eps = 0."""
    count = torch.broadcast_to(mask, u.shape).sum(dims, keepdim=True).clamp(min=1)
    du = (u - (u * mask).sum(dims, keepdim=True) / count) * mask
    dv = (v - (v * mask).sum(dims, keepdim=True) / count) * mask
    s_uv = (du * dv.conj()).real.sum(dims)
    s_uu = (du * du.conj()).real.sum(dims)
    s_vv = (dv * dv.conj()).real.sum(dims)
    denominator = torch.sqrt(s_uu + eps) * torch.sqrt(s_vv + eps)  # no product to overflow (large eps)
    degenerate = denominator == 0  # eps = 0 and a constant u or v (or an empty band): then s_uv = 0 too
    r = torch.where(degenerate, 1.0, (s_uv + eps) / torch.where(degenerate, 1.0, denominator))
    return r.clamp(-1, 1)  # SPEC §4: r ∈ [−1, 1] even where rounding takes it a hair past 1
