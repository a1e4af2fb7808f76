"""The generic fast path in plain torch ops, with a hand-written backward. CPU default; runs on CUDA.

Forward: path "parseval": SPEC §3's Parseval sums in one pass, no transform; path "fft": rfftn of
x − y and of the base (_spectra.py), then the band statistics as segment sums in two passes
(means, then centred moments); path "tiny" (`is_tiny`): the fft path in float64 throughout.
Backward: per-bin coefficients (_stats.gradient_coefficients), irfftn, and the activation's
Jacobian (the activation recomputed). Design: docs/numerics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._options import compute_dtype, is_label_map
from .._stats import STATS, gradient_coefficients, parseval_stats
from ..bands import SPREAD, HalfGridTables, half_grid_tables
from ._spectra import activate, base_is_prediction, make_hermitian
from .registry import Problem


def unavailable_reason(device: torch.device) -> str | None:
    return None


# ----------------------------------------------------------------------------------------------
# shared steps: activation, labels, channel layout
def _activation_backward(grad_p: torch.Tensor, p: torch.Tensor, problem: Problem) -> torch.Tensor:
    """The activation's Jacobian, in place on `grad_p` (a fresh tensor): no input-sized temporaries."""
    if problem.activation == "softmax":  # p·(g − Σ_c p_c g_c)
        grad_p.mul_(p)
        return grad_p.addcmul_(p, grad_p.sum(1, keepdim=True), value=-1)
    if problem.activation == "sigmoid":  # g·p·(1 − p)
        return grad_p.mul_(p).addcmul_(grad_p, p, value=-1)
    return grad_p


def _labels(target: torch.Tensor, problem: Problem) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(label map with ignored positions sent to class 0, valid mask as 0/1 or None)."""
    labels = target.long()
    if problem.ignore_index is None:
        return labels, None
    valid = labels != problem.ignore_index
    return torch.where(valid, labels, 0), valid


def _valid(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """`_labels`' valid mask alone: where a label map is not `ignore_index`."""
    return target.long() != ignore_index


def _dense_target(input: torch.Tensor, target: torch.Tensor, problem: Problem, dtype: torch.dtype) -> torch.Tensor:
    """Output channels of the target as floats, (B, C', *S); a label map becomes class masks."""
    if not is_label_map(input, target):
        return target[:, problem.offset :].to(dtype)
    labels, valid = _labels(target, problem)
    classes = torch.arange(problem.offset, input.shape[1], device=input.device)
    classes = classes.view(1, -1, *([1] * (input.dim() - 2)))
    masks = labels.unsqueeze(1) == classes
    if valid is not None:
        masks &= valid.unsqueeze(1)
    return masks.to(dtype)


def _pad_channels(x: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Put the dropped background channel back as zeros (gradients live on all C channels)."""
    if problem.offset == 0:
        return x
    return torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)


# ----------------------------------------------------------------------------------------------
# entry points


# Slices of at most TINY_BINS half-grid bins take the spectral path in float64 throughout (the
# activation, spectra, statistics and the backward; the loss is cast back by the caller, the
# gradient here). In so few bins a band's centred values span one or two directions, so r sits
# at ±1 or rests on eps: 1 − r is flat and its gradient is the small remainder of terms ~1/eps
# apart (e.g. a band of the DC bin and one mirror pair), which float32 statistics cannot resolve
# (float64 spectra with float32 statistics missed by up to 900x). Measured, float32 path against
# the float32 reference (3 seeds, K = 1..5, both spectra): random or soft targets missed SPEC §4
# at up to 9 bins (5x1 K=2: 2.5x; 3 samples: 5x), one-pixel classes (flat |Y|) at up to 16 (16x1,
# 4x4: 4-5x, the reference at 0.001x; larger ones are exact through _stats.with_flat_targets).
# Cost: none at 8x4 slices (per-call overhead), at most 1.3x for 512x4 slices of <= 16 bins.
TINY_BINS = 16


def is_tiny(spatial: tuple[int, ...]) -> bool:
    """Whether a slice of this spatial shape takes the "tiny" path, in float64 (TINY_BINS): planning.resolve
    sends such problems here from every fast backend (their float32 kernels cannot match it)."""
    return math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1) <= TINY_BINS


def _tiny_float64(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) as the spectral path computes them: float64 on the "tiny" path."""
    if problem.path != "tiny":
        return input, target
    return input.double(), target.double() if target.is_floating_point() else target


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    if problem.parseval:
        return [_parseval_stats(input, target, problem)]
    return _spectral_stats(*_tiny_float64(input, target, problem), problem)


def band_stats_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    batch, channels, *spatial = input.shape
    channels -= problem.offset
    dtype = compute_dtype(_tiny_float64(input, target, problem)[0].dtype)
    stats = input.new_empty((batch, channels, problem.num_bands, len(STATS)), dtype=dtype)
    if problem.parseval:
        return [stats]
    bins = math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1)
    return [stats, *_new_saved(input.new_empty(()), problem.spectrum, batch, channels, bins, dtype)]


def band_stats_backward(
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    saved: Sequence[torch.Tensor],
    problem: Problem,
) -> torch.Tensor:
    coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats)
    work, target = _tiny_float64(input, target, problem)
    p = activate(work, problem)
    if problem.parseval:
        grad_x = _parseval_backward(coefficients[:, :, 0], p, target, problem)
    else:
        grad_x = _spectral_backward(coefficients, work, saved, problem)
    return _finish_backward(grad_x, p, target, problem).to(input.dtype)


def _finish_backward(grad_x: torch.Tensor, p: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Gradient w.r.t. the probabilities (a fresh tensor, changed in place) → w.r.t. the input:
    ignored positions, activation."""
    if is_label_map(p, target) and problem.ignore_index is not None:
        grad_x.mul_(_valid(target, problem.ignore_index).unsqueeze(1))
    return _activation_backward(grad_x, p, problem)


# ----------------------------------------------------------------------------------------------
# complex spectrum, one band: sums over the samples but the origin (_stats.parseval_stats)


def _parseval_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """PARSEVAL_SUMS per (b, c) → STATS (B, C', 1, 8). x − y is formed exactly, sample by sample
    (never a difference of sums), in place of x once x's own sums are taken."""
    p = activate(input, problem)
    x = p.flatten(2)
    owned = x.untyped_storage().data_ptr() != input.untyped_storage().data_ptr()  # not the caller's input
    rest = x[..., 1:]
    if is_label_map(input, target):  # per class, straight from the labels (never one-hot)
        labels, valid = _labels(target.flatten(1), problem)
        weight = x.new_ones(()).expand(labels.shape) if valid is None else valid.to(x.dtype)
        if valid is not None:
            x, owned = x * weight.unsqueeze(1), True
            rest = x[..., 1:]
        x_at_label = rest.gather(1, labels[:, 1:].unsqueeze(1)).squeeze(1)
        sum_xy = x.new_zeros(x.shape[:2]).scatter_add_(1, labels[:, 1:], x_at_label)
        sum_yy = x.new_zeros(x.shape[:2]).scatter_add_(1, labels[:, 1:], weight[:, 1:])
        origin_y = x.new_zeros(x.shape[:2]).scatter_(1, labels[:, :1], weight[:, :1])
        origin_x, sum_xx = x[..., 0].clone(), torch.linalg.vecdot(rest, rest)
        difference = (x if owned else x.clone()).scatter_add_(1, labels.unsqueeze(1), -weight.unsqueeze(1))
    else:
        y = target.flatten(2).to(x.dtype)
        sum_xy = torch.linalg.vecdot(rest, y[..., 1:])
        sum_yy = torch.linalg.vecdot(y[..., 1:], y[..., 1:])
        origin_x, origin_y, sum_xx = x[..., 0].clone(), y[..., 0], torch.linalg.vecdot(rest, rest)
        difference = x.sub_(y) if owned else x - y
    sum_dd = torch.linalg.vecdot(difference[..., 1:], difference[..., 1:])
    sums = torch.stack([origin_x, origin_y, sum_xx, sum_yy, sum_xy, sum_dd], dim=-1)  # PARSEVAL_SUMS
    return parseval_stats(sums[:, problem.offset :], x.shape[-1]).unsqueeze(2)  # (B, C', 1, 8)


def _parseval_backward(
    coefficients: torch.Tensor, p: torch.Tensor, target: torch.Tensor, problem: Problem
) -> torch.Tensor:
    """coefficients (B, C', 7) → gradient w.r.t. p: c_uu·x + c_uv·y + c_dd·(x − y), formed as
    (c_uu + c_dd)·x + (c_uv − c_dd)·y (x − y is rounded as much as x itself here, and no copy of
    x is needed), and at the origin √N·c_mean (the origin enters through the means only)."""
    shape = p.shape
    label_map = is_label_map(p, target)
    p = p.flatten(2)
    c_mean, c_uu, c_uv, c_dd = _pad_channels(coefficients.to(p.dtype), problem)[..., :4].unbind(-1)
    to_x, to_y = c_uu + c_dd, c_uv - c_dd
    if label_map:
        labels, valid = _labels(target.flatten(1), problem)
        grad = to_x.unsqueeze(-1) * p  # ignored samples are zeroed by _finish_backward
        at_label = to_y.gather(1, labels)
        grad.scatter_add_(1, labels.unsqueeze(1), (at_label if valid is None else at_label * valid).unsqueeze(1))
    else:
        grad = to_x.unsqueeze(-1) * p
        grad.addcmul_(target.flatten(2).to(p.dtype), to_y.unsqueeze(-1))
    grad[..., 0] = math.sqrt(p.shape[-1]) * c_mean
    return grad.view(shape)


# ----------------------------------------------------------------------------------------------
# amplitude or banded spectra: rfftn, band statistics by segment sums; irfftn in the backward


# What the backward needs of each bin, planar (P, B, C', M): u, v, d for the amplitude spectrum,
# with X interleaved (B, C', M, 2) for the phase (elementwise ops with the complex spectra run
# ~5x faster interleaved than on strided real parts); X, Y, D planar for the complex spectrum.
# Recomputing them costs more.
PLANES = {"amplitude": 3, "complex": 6}
# Half-spectrum values per group of batch elements transformed together on a CPU (one element at
# least): each bin-sized temporary then stays about 0.5 MiB, within a core's L2 cache (measured
# here: 2**20 values per group ran 1.5-2x slower than 2**17 at 8x4x256x256). On a GPU the whole
# batch is one group: every group costs each op a launch.
CHUNK_BINS = 2**17


def _chunks(batch: int, per_item: int, device: torch.device) -> list[slice]:
    """Slices of the batch, each of about CHUNK_BINS values on a CPU (one batch element at least)."""
    size = batch if device.type != "cpu" else max(1, CHUNK_BINS // max(per_item, 1))
    return [slice(start, min(start + size, batch)) for start in range(0, batch, max(size, 1))]


def _spectral_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """[STATS (B, C', K, 8), planes (P, B, C', M)] from the transforms of the base and of x − y
    (_spectra.py), a chunk of the batch at a time."""
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    p = activate(input, problem)
    x = p[:, problem.offset :]
    if is_label_map(input, target) and problem.ignore_index is not None:
        x = x * _valid(target, problem.ignore_index).unsqueeze(1)
    base_is_x = base_is_prediction(input, target, problem, x)
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    batch, channels = x.shape[:2]
    stats = x.new_empty((batch, channels, problem.num_bands, len(STATS)))
    saved = _new_saved(x, problem.spectrum, batch, channels, tables.band.numel(), x.dtype)
    for chunk in _chunks(batch, channels * tables.band.numel(), input.device):
        x_c, y_c = x[chunk], _dense_target(input[chunk], target[chunk], problem, x.dtype)
        base = torch.where(base_is_x[chunk].view(*base_is_x[chunk].shape, *([1] * len(dims))), x_c, y_c)
        S, D = (make_hermitian(torch.fft.rfftn(z, dim=dims, norm="ortho"), spatial[-1]) for z in (base, x_c - y_c))
        del base
        values = _bin_values(S, D, base_is_x[chunk], saved, chunk)
        stats[chunk] = _centred_stats(values, tables, problem.num_bands).view(
            -1, channels, problem.num_bands, len(STATS)
        )
    return [stats, *saved]


def _new_saved(
    like: torch.Tensor, spectrum: str, batch: int, channels: int, bins: int, dtype: torch.dtype
) -> list[torch.Tensor]:
    """The tensors the backward reads (PLANES), uninitialised: [planes] for the complex
    spectrum, [X interleaved, planes] for the amplitude."""
    planes = like.new_empty((PLANES[spectrum], batch, channels, bins), dtype=dtype)
    if spectrum == "complex":
        return [planes]
    return [like.new_empty((batch, channels, bins, 2), dtype=dtype), planes]


# u, v and d of every bin, each as (real part, imaginary part or None): `_bin_values`' result
_Part = tuple[torch.Tensor, torch.Tensor | None]
_BinValues = tuple[_Part, _Part, _Part]


def _bin_values(
    S: torch.Tensor, D: torch.Tensor, base_is_x: torch.Tensor, saved: list[torch.Tensor], chunk: slice
) -> _BinValues:
    """u, v and d of every bin, as (real part, imaginary part or None) each (rows, M), from the
    complex half spectra S, D (n, C', *half) of a chunk of the batch (_spectra.py), written
    into its rows of the saved tensors (`_new_saved`), what the backward reads.

    X = S + D·[base is y], Y = S − D·[base is x]. Amplitude: d = (|X|² − |Y|²)/(|X| + |Y|) with
    |X|² − |Y|² = Re(D·conj(X + Y)), every term of the size of D (X = Y = 0 means D = 0: d = 0).
    X and Y are formed interleaved, the values the statistics read are planar and contiguous:
    CPU kernels on strided real or imaginary parts run 3-10x slower.
    """
    planes = saved[-1][:, chunk].flatten(1, 2)
    rows = planes.shape[1]
    S, D = torch.view_as_real(S.reshape(rows, -1)), torch.view_as_real(D.reshape(rows, -1))
    to_y = base_is_x.reshape(rows, 1, 1).to(planes.dtype)
    to_x = 1 - to_y
    if len(saved) == 1:  # complex spectrum: X, Y, D as planes
        xr, xi, yr, yi, dr, di = planes
        dr.copy_(D[..., 0])
        di.copy_(D[..., 1])
        for out_x, out_y, part, d_part in zip((xr, xi), (yr, yi), S.unbind(-1), (dr, di)):
            torch.addcmul(part, d_part, to_x[..., 0], out=out_x)
            torch.addcmul(part, d_part, to_y[..., 0], value=-1, out=out_y)
        return (xr, xi), (yr, yi), (dr, di)
    u, v, d = planes
    X = torch.addcmul(S, D, to_x, out=saved[0][chunk].flatten(0, 1))
    Y = torch.addcmul(S, D, to_y, value=-1)
    _amplitude(X, out=u)
    _amplitude(Y, out=v)
    Y.add_(X).mul_(D)  # Re(D·conj(X + Y)) = sum of the products of the parts
    torch.add(Y[..., 0], Y[..., 1], out=d)
    d.div_(torch.add(u, v).clamp_min_(torch.finfo(d.dtype).tiny))
    return (u, None), (v, None), (d, None)


def _amplitude(Z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """|Z| of interleaved values (rows, M, 2) → (rows, M)."""
    squares = Z * Z
    return torch.add(squares[..., 0], squares[..., 1], out=out).sqrt_()


def _band_dot(a: torch.Tensor, b: torch.Tensor, tables: HalfGridTables, num_bands: int) -> torch.Tensor:
    """Σ over the bins of each band of a·b: a (S, M), b (S, M) or (M,) → (S, K); a segment sum by
    band index (index_add_), or one dot product per row for a single band."""
    if num_bands == 1:
        return (a @ b if b.dim() == 1 else torch.linalg.vecdot(a, b)).unsqueeze(-1)
    sums = a.new_zeros((a.shape[0], num_bands * SPREAD)).index_add_(1, tables.band_spread, a * b)
    return sums.view(-1, num_bands, SPREAD).sum(-1)


def _per_bin(values: torch.Tensor, tables: HalfGridTables, num_bands: int) -> torch.Tensor:
    """Each band's value at each of its bins: (S, K) → (S, M) (broadcastable (S, 1) for one band)."""
    if num_bands == 1:
        return values
    return values.gather(-1, tables.band.expand(values.shape[0], -1))


def _centred_stats(values: _BinValues, tables: HalfGridTables, num_bands: int) -> torch.Tensor:
    """STATS (B·C', K, 8) of the flat bin values of `_bin_values`: band means first, then the
    moments about them (two passes), each Hermitian-weighted."""
    (ur, ui), (vr, vi), (dr, di) = values
    weight = tables.weight.to(ur.dtype)
    counts = tables.counts.to(ur.dtype)
    means = [_band_dot(real, weight, tables, num_bands) / counts.clamp(min=1) for real in (ur, vr, dr)]
    du, dv, dd = (real - _per_bin(mean, tables, num_bands) for real, mean in zip((ur, vr, dr), means))
    w_du, w_dv, w_dd = du * weight, dv * weight, dd * weight
    m2 = [
        _band_dot(w_du, du, tables, num_bands),
        _band_dot(w_dv, dv, tables, num_bands),
        _band_dot(w_du, dv, tables, num_bands),
        _band_dot(w_dd, dd, tables, num_bands),
    ]
    if ui is not None and vi is not None and di is not None:  # complex spectrum: the imaginary parts, means 0
        w_ui, w_vi = ui * weight, vi * weight
        imaginary = [
            _band_dot(w_ui, ui, tables, num_bands),
            _band_dot(w_vi, vi, tables, num_bands),
            _band_dot(w_ui, vi, tables, num_bands),
            _band_dot(di * weight, di, tables, num_bands),
        ]
        m2 = [real + imag for real, imag in zip(m2, imaginary)]
    count = counts.expand(ur.shape[0], num_bands)
    return torch.stack([count, *means, *m2], dim=-1)


def _spectral_backward(
    coefficients: torch.Tensor, input: torch.Tensor, saved: Sequence[torch.Tensor], problem: Problem
) -> torch.Tensor:
    """Gradient w.r.t. p (B, C, *S) from COEFFICIENTS (B, C', K, 7) and the saved tensors
    (`_new_saved`): per bin, then irfftn, a chunk of the batch at a time (the background channel,
    if dropped, is 0)."""
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    planes = saved[-1]
    grad = planes.new_empty(input.shape)
    grad[:, : problem.offset] = 0
    channels, bins = planes.shape[2:]

    def at_bins(per_band: torch.Tensor) -> torch.Tensor:  # (rows, K) → (rows, M), or (rows, 1) for one band
        return _per_bin(per_band, tables, problem.num_bands)

    for chunk in _chunks(input.shape[0], channels * bins, input.device):
        coefficient = coefficients[chunk].to(planes.dtype).flatten(0, 1).unbind(-1)
        c_mean, c_uu, c_uv, c_dd, mean_u, mean_v, mean_d = coefficient
        values = planes[:, chunk].flatten(1, 2)
        if problem.spectrum == "amplitude":
            ur, vr, dr = values
        else:
            xr, xi, vr, vi, dr, di = values
            ur = xr
        grad_re = (ur - at_bins(mean_u)).mul_(at_bins(c_uu))
        grad_re.addcmul_(vr - at_bins(mean_v), at_bins(c_uv)).addcmul_(dr - at_bins(mean_d), at_bins(c_dd))
        grad_re += at_bins(c_mean)
        if problem.spectrum == "amplitude":  # d|X|/dX = X/|X|, and 0 at X = 0 (SPEC §4)
            scale = grad_re.div_(ur).masked_fill_(ur == 0, 0)
            grad_X = torch.view_as_complex(saved[0][chunk].flatten(0, 1)) * scale
        else:
            grad_im = (xi * at_bins(c_uu)).addcmul_(vi, at_bins(c_uv)).addcmul_(di, at_bins(c_dd))
            grad_X = torch.complex(grad_re, grad_im)
        half = (-1, channels, *spatial[:-1], spatial[-1] // 2 + 1)
        grad[chunk, problem.offset :] = torch.fft.irfftn(grad_X.view(half), s=spatial, dim=dims, norm="ortho")
    return grad
