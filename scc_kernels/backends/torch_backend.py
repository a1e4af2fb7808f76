"""The generic fast path in plain torch ops, with a hand-written backward. CPU default; runs on CUDA.

- complex spectrum, one band: SPEC's Parseval form, one pass over the data, no transform;
  a label map is never expanded to one-hot (gather/scatter by label instead).
- amplitude or banded spectra: rfftn of the difference x − y and of one of x, y (_spectra.py
  says which, and why: it keeps d = u − v exact to its own size near convergence), then the
  band statistics in two passes over the bins, means and then centred moments, each a segment
  sum by band index (`index_add_`, O(bins) memory); irfftn in the backward. Both half spectra
  are saved; the activation is recomputed in the backward (cheaper than saving it).
"""

from __future__ import annotations

import math

import torch

from .._options import Problem, compute_dtype
from .._stats import STATS, gradient_coefficients, parseval_stats
from ..bands import HalfGridTables, half_grid_tables
from ._spectra import base_is_prediction, bin_values, half_spectra


def unavailable_reason(device: torch.device) -> str | None:
    return None


# ----------------------------------------------------------------------------------------------
# shared steps: activation, labels, channel layout
def _activate(input: torch.Tensor, problem: Problem) -> torch.Tensor:
    x = input.to(compute_dtype(input.dtype))
    if problem.activation == "softmax":
        return torch.softmax(x, dim=1)
    if problem.activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def _activation_backward(grad_p: torch.Tensor, p: torch.Tensor, problem: Problem) -> torch.Tensor:
    """The activation's Jacobian, in place on `grad_p` (a fresh tensor): no input-sized temporaries."""
    if problem.activation == "softmax":  # p·(g − Σ_c p_c g_c)
        grad_p.mul_(p)
        return grad_p.addcmul_(p, grad_p.sum(1, keepdim=True), value=-1)
    if problem.activation == "sigmoid":  # g·p·(1 − p)
        return grad_p.mul_(p).addcmul_(grad_p, p, value=-1)
    return grad_p


def _labels(target: torch.Tensor, problem: Problem):
    """(label map with ignored positions sent to class 0, valid mask as 0/1 or None)."""
    labels = target.long()
    if problem.ignore_index is None:
        return labels, None
    valid = labels != problem.ignore_index
    return torch.where(valid, labels, 0), valid


def _is_label_map(input: torch.Tensor, target: torch.Tensor) -> bool:
    return target.dim() == input.dim() - 1


def _dense_target(input: torch.Tensor, target: torch.Tensor, problem: Problem, dtype) -> torch.Tensor:
    """Output channels of the target as floats, (B, C', *S); a label map becomes class masks."""
    if not _is_label_map(input, target):
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


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    if problem.parseval:
        return [_parseval_stats(input, target, problem)]
    return _per_sample(_spectral_stats, input, target, problem=problem)


def band_stats_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    batch, channels, *spatial = input.shape
    channels -= problem.offset
    dtype = compute_dtype(input.dtype)
    stats = input.new_empty((batch, channels, problem.num_bands, len(STATS)), dtype=dtype)
    if problem.parseval:
        return [stats]
    half = (batch, channels, *spatial[:-1], spatial[-1] // 2 + 1, 2)
    spectra = [input.new_empty(half, dtype=dtype), input.new_empty(half, dtype=dtype)]
    return [stats, *spectra, input.new_empty((batch, channels), dtype=torch.bool)]


def band_stats_backward(grad_stats, stats, input, target, saved, problem: Problem) -> torch.Tensor:
    coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats)
    if problem.parseval:
        p = _activate(input, problem)
        grad_x = _parseval_backward(coefficients[:, :, 0], p, target, problem)
        return _finish_backward(grad_x, p, target, problem).to(input.dtype)
    (grad,) = _per_sample(_spectral_backward, coefficients, input, target, *saved, problem=problem)
    return grad


def _finish_backward(grad_x, p, target, problem: Problem) -> torch.Tensor:
    """Gradient w.r.t. the probabilities → w.r.t. the input: ignored positions, activation."""
    if _is_label_map(p, target) and problem.ignore_index is not None:
        grad_x = grad_x * _labels(target, problem)[1].unsqueeze(1)
    return _activation_backward(grad_x, p, problem)


def _per_sample(fn, *tensors, problem: Problem) -> list[torch.Tensor]:
    """`fn` on one batch element at a time, its outputs gathered into preallocated tensors.

    The transform paths make several spectrum-sized temporaries; per sample they stay a 1/B
    share of the input, which halves the peak memory of a typical batch.
    """
    batch = tensors[0].shape[0]
    outputs = None
    for b in range(batch):
        parts = fn(*(t[b : b + 1] for t in tensors), problem)
        if outputs is None:
            outputs = [part.new_empty((batch, *part.shape[1:])) for part in parts]
        for output, part in zip(outputs, parts):
            output[b : b + 1] = part
    return outputs


# ----------------------------------------------------------------------------------------------
# complex spectrum, one band: sums over the samples but the origin (_stats.parseval_stats)


def _parseval_operands(p: torch.Tensor, target: torch.Tensor, problem: Problem):
    """x = p zeroed at ignored samples, x − y (exact: never a difference of sums), and y as
    `(labels, weight)` of a label map (one-hot implied, weight 0 where ignored) or a dense tensor.
    All flat: (B, C, N), labels and weight (B, N)."""
    label_map = _is_label_map(p, target)
    p = p.flatten(2)
    if not label_map:
        y = target.flatten(2).to(p.dtype)
        return p, p - y, y
    labels, valid = _labels(target.flatten(1), problem)
    weight = p.new_ones(()).expand(labels.shape) if valid is None else valid.to(p.dtype)
    x = p if valid is None else p * weight.unsqueeze(1)
    difference = x.clone().scatter_add_(1, labels.unsqueeze(1), -weight.unsqueeze(1))
    return x, difference, (labels, weight)


def _parseval_stats(input, target, problem: Problem) -> torch.Tensor:
    x, difference, y = _parseval_operands(_activate(input, problem), target, problem)
    rest, rest_difference = x[..., 1:], difference[..., 1:]
    if isinstance(y, tuple):  # per class, straight from the labels
        labels, weight = y
        x_at_label = rest.gather(1, labels[:, 1:].unsqueeze(1)).squeeze(1)
        sum_xy = x.new_zeros(x.shape[:2]).scatter_add_(1, labels[:, 1:], x_at_label)
        sum_yy = x.new_zeros(x.shape[:2]).scatter_add_(1, labels[:, 1:], weight[:, 1:])
        origin_y = x.new_zeros(x.shape[:2]).scatter_(1, labels[:, :1], weight[:, :1])
    else:
        sum_xy = torch.linalg.vecdot(rest, y[..., 1:])
        sum_yy = torch.linalg.vecdot(y[..., 1:], y[..., 1:])
        origin_y = y[..., 0]
    sum_xx = torch.linalg.vecdot(rest, rest)
    sum_dd = torch.linalg.vecdot(rest_difference, rest_difference)
    sums = torch.stack([x[..., 0], origin_y, sum_xx, sum_yy, sum_xy, sum_dd], dim=-1)  # PARSEVAL_SUMS
    return parseval_stats(sums[:, problem.offset :], x.shape[-1]).unsqueeze(2)  # (B, C', 1, 8)


def _parseval_backward(coefficients, p, target, problem: Problem) -> torch.Tensor:
    """coefficients (B, C', 7) → gradient w.r.t. p: c_uu·x + c_uv·y + c_dd·(x − y), and at the
    origin √N·c_mean (the origin enters through the means only)."""
    shape = p.shape
    x, difference, y = _parseval_operands(p, target, problem)
    c_mean, c_uu, c_uv, c_dd = _pad_channels(coefficients.to(p.dtype), problem)[..., :4].unbind(-1)
    grad = torch.addcmul(c_uu.unsqueeze(-1) * x, c_dd.unsqueeze(-1), difference)
    if isinstance(y, tuple):
        labels, weight = y
        grad.scatter_add_(1, labels.unsqueeze(1), (c_uv.gather(1, labels) * weight).unsqueeze(1))
    else:
        grad.addcmul_(c_uv.unsqueeze(-1), y)
    grad[..., 0] = math.sqrt(x.shape[-1]) * c_mean
    return grad.view(shape)


# ----------------------------------------------------------------------------------------------
# amplitude or banded spectra: rfftn, band statistics by segment sums; irfftn in the backward


def _spectral_stats(input, target, problem: Problem) -> list[torch.Tensor]:
    """One batch element: [STATS (1, C', K, 8), S, D, base_is_x], S and D the real views
    (..., 2) of the half spectra of the base and of x − y (see _spectra.py)."""
    p = _activate(input, problem)
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    x = p[:, problem.offset :]
    if _is_label_map(input, target) and problem.ignore_index is not None:
        x = x * _labels(target, problem)[1].unsqueeze(1)
    y = _dense_target(input, target, problem, x.dtype)
    del p
    base_is_x = base_is_prediction(input, target, problem)
    base = torch.where(base_is_x.view(*base_is_x.shape, *([1] * len(dims))), x, y)
    S, D = (torch.view_as_real(torch.fft.rfftn(z, dim=dims, norm="ortho")) for z in (base, x - y))
    del x, y, base
    tables = half_grid_tables(spatial, problem.num_bands, S.device)
    values = bin_values(*half_spectra(S, D, base_is_x), problem.spectrum)
    stats = _centred_stats(values, tables, problem.num_bands)
    return [stats.view(*S.shape[:2], problem.num_bands, len(STATS)), S, D, base_is_x]


def _band_sum(values: torch.Tensor, tables: HalfGridTables, num_bands: int) -> torch.Tensor:
    """Σ over the bins of each band: (..., M) → (..., K), a segment sum by band index."""
    if num_bands == 1:
        return values.sum(-1, keepdim=True)
    flat = values.reshape(-1, values.shape[-1])
    out = flat.new_zeros((flat.shape[0], num_bands)).index_add_(1, tables.band, flat)
    return out.view(*values.shape[:-1], num_bands)


def _per_bin(values: torch.Tensor, tables: HalfGridTables, num_bands: int) -> torch.Tensor:
    """Each band's value at each of its bins: (..., K) → (..., M) (broadcastable for one band)."""
    if num_bands == 1:
        return values
    return values.gather(-1, tables.band.expand(*values.shape[:-1], -1))


def _centred_stats(values, tables: HalfGridTables, num_bands: int) -> torch.Tensor:
    """STATS (B·C', K, 8) of the flat bin values of `bin_values`: band means first, then the
    moments about them (two passes). One statistic at a time, so that the temporaries stay a
    few bin-sized arrays."""
    (ur, ui), (vr, vi), (dr, di) = values
    weight = tables.weight.to(ur.dtype)
    counts = tables.counts.to(ur.dtype)
    means = [_band_sum(real * weight, tables, num_bands) / counts.clamp(min=1) for real in (ur, vr, dr)]
    du, dv, dd = (real - _per_bin(mean, tables, num_bands) for real, mean in zip((ur, vr, dr), means))
    pairs = [(du, du, ui, ui), (dv, dv, vi, vi), (du, dv, ui, vi), (dd, dd, di, di)]
    m2 = []
    for a, b, a_im, b_im in pairs:  # Σ w·Re(ã·conj b̃) over each band
        product = a * b if a_im is None else torch.addcmul(a * b, a_im, b_im)
        m2.append(_band_sum(product.mul_(weight), tables, num_bands))
    count = counts.expand(ur.shape[0], num_bands)
    return torch.stack([count, *means, *m2], dim=-1)


def _spectral_backward(coefficients, input, target, S, D, base_is_x, problem: Problem) -> list[torch.Tensor]:
    """One batch element: the input's gradient from COEFFICIENTS (1, C', K, 7) and the saved spectra."""
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    tables = half_grid_tables(spatial, problem.num_bands, S.device)
    X, Y, D = half_spectra(S, D, base_is_x)
    (ur, ui), (vr, vi), (dr, di) = bin_values(X, Y, D, problem.spectrum)
    c_mean, c_uu, c_uv, c_dd, mean_u, mean_v, mean_d = coefficients.to(X.dtype).flatten(0, 1).unbind(-1)

    def at_bins(per_band):  # (B·C', K) → (B·C', M), one coefficient at a time (bounded temporaries)
        return _per_bin(per_band, tables, problem.num_bands)

    grad_re = at_bins(c_mean) + at_bins(c_uu) * (ur - at_bins(mean_u))
    grad_re += at_bins(c_uv) * (vr - at_bins(mean_v))
    grad_re += at_bins(c_dd) * (dr - at_bins(mean_d))
    if problem.spectrum == "amplitude":  # d|X|/dX = X/|X|, and 0 at X = 0 (SPEC §4)
        scale = torch.where(ur > 0, grad_re / torch.where(ur > 0, ur, 1), 0)
        grad_X = (X * scale.unsqueeze(-1)).view(S.shape)
    else:
        grad_im = at_bins(c_uu) * ui + at_bins(c_uv) * vi + at_bins(c_dd) * di
        grad_X = torch.stack([grad_re, grad_im], dim=-1).view(S.shape)
    grad_x = torch.fft.irfftn(torch.view_as_complex(grad_X), s=spatial, dim=dims, norm="ortho")
    del grad_X
    grad_x = _finish_backward(_pad_channels(grad_x, problem), _activate(input, problem), target, problem)
    return [grad_x.to(input.dtype)]
