"""The generic fast path in plain torch ops, with a hand-written backward. CPU default; runs on CUDA.

- complex spectrum, one band: SPEC's Parseval form, one pass over the data, no transform;
  a label map is never expanded to one-hot (gather/scatter by label instead).
- amplitude or banded spectra: rfftn forward, irfftn backward; band sums are one matmul with
  the Hermitian-weighted band matrix. The prediction's half spectrum (and |Y| or Y) is saved,
  the activation is recomputed in the backward (cheaper than saving it).
"""

from __future__ import annotations

import math

import torch

from .._options import Problem, compute_dtype
from ..bands import band_index, half_band_matrix


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


def band_sums(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    if problem.parseval:
        return [_parseval_sums(input, target, problem)]
    return _per_sample(_spectral_sums, input, target, problem=problem)


def band_sums_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    batch, channels, *spatial = input.shape
    channels -= problem.offset
    dtype = compute_dtype(input.dtype)
    sums = input.new_empty((batch, channels, problem.num_bands, 5), dtype=dtype)
    if problem.parseval:
        return [sums]
    half = (batch, channels, *spatial[:-1], spatial[-1] // 2 + 1)
    saved_v = input.new_empty(half if problem.spectrum == "amplitude" else (*half, 2), dtype=dtype)
    return [sums, input.new_empty((*half, 2), dtype=dtype), saved_v]


def band_sums_backward(grad_sums, input, target, saved, problem: Problem) -> torch.Tensor:
    if problem.parseval:
        p = _activate(input, problem)
        grad_x = _parseval_backward(grad_sums, p, input, target, problem)
        return _finish_backward(grad_x, p, target, problem).to(input.dtype)
    (grad,) = _per_sample(_spectral_backward, grad_sums, input, target, *saved, problem=problem)
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
# complex spectrum, one band: Σ_Ω u = √N·x[0], Σ u·v = Σ x·y (Parseval), no transform


def _parseval_sums(input, target, problem: Problem) -> torch.Tensor:
    p = _activate(input, problem).flatten(2)  # (B, C, N)
    root_n = math.sqrt(p.shape[-1])
    if _is_label_map(input, target):
        labels, valid = _labels(target.flatten(1), problem)
        if valid is None:
            weight = p.new_ones(()).expand(labels.shape)
        else:
            weight = valid.to(p.dtype)
            p = p * weight.unsqueeze(1)
        # Σ_n x·y and Σ_n y² per class, straight from the labels
        p_at_label = p.gather(1, labels.unsqueeze(1)).squeeze(1)
        sum_uv = p.new_zeros(p.shape[:2]).scatter_add_(1, labels, p_at_label)
        sum_vv = p.new_zeros(p.shape[:2]).scatter_add_(1, labels, weight)
        sum_v = p.new_zeros(p.shape[:2]).scatter_(1, labels[:, :1], weight[:, :1]) * root_n
    else:
        y = target.flatten(2).to(p.dtype)
        sum_uv = torch.linalg.vecdot(p, y)
        sum_vv = torch.linalg.vecdot(y, y)
        sum_v = y[..., 0] * root_n
    sums = torch.stack([p[..., 0] * root_n, sum_v, sum_uv, torch.linalg.vecdot(p, p), sum_vv], dim=-1)
    return sums[:, problem.offset :].unsqueeze(2)  # (B, C', 1, 5)


def _parseval_backward(grad_sums, p, input, target, problem: Problem) -> torch.Tensor:
    shape = p.shape
    p = p.flatten(2)
    grad = _pad_channels(grad_sums[:, :, 0].to(p.dtype), problem)  # (B, C, 5)
    grad_u, _, grad_uv, grad_uu, _ = grad.unbind(-1)
    if _is_label_map(input, target):
        labels, valid = _labels(target.flatten(1), problem)
        grad_x = 2 * grad_uu.unsqueeze(-1) * (p if valid is None else p * valid.unsqueeze(1))
        grad_x.scatter_add_(1, labels.unsqueeze(1), grad_uv.gather(1, labels).unsqueeze(1))
    else:
        grad_x = 2 * grad_uu.unsqueeze(-1) * p + grad_uv.unsqueeze(-1) * target.flatten(2).to(p.dtype)
    grad_x[..., 0] += math.sqrt(p.shape[-1]) * grad_u
    return grad_x.view(shape)


# ----------------------------------------------------------------------------------------------
# amplitude or banded spectra: rfftn, band sums by matmul; irfftn in the backward


def _spectral_sums(input, target, problem: Problem) -> list[torch.Tensor]:
    p = _activate(input, problem)
    spatial = tuple(input.shape[2:])
    dims = tuple(range(2, input.dim()))
    x = p[:, problem.offset :]
    if _is_label_map(input, target) and problem.ignore_index is not None:
        x = x * _labels(target, problem)[1].unsqueeze(1)
    # real views of the half spectra: |X|² = Xr² + Xi² is much cheaper than complex abs (hypot)
    X = torch.view_as_real(torch.fft.rfftn(x, dim=dims, norm="ortho"))
    del p, x
    Y = torch.view_as_real(torch.fft.rfftn(_dense_target(input, target, problem, X.dtype), dim=dims, norm="ortho"))
    band_matrix = half_band_matrix(spatial, problem.num_bands).to(device=X.device, dtype=X.dtype)
    batch, channels = input.shape[0], input.shape[1] - problem.offset

    def band_sum(stat):  # Σ over each band of the full spectrum, (B·C', K)
        return stat.reshape(batch * channels, -1) @ band_matrix

    power_x, power_y = _power(X), _power(Y)
    sum_uu, sum_vv = band_sum(power_x), band_sum(power_y)
    if problem.spectrum == "amplitude":
        u, v = power_x.sqrt_(), power_y.sqrt_()
        sums = [band_sum(u), band_sum(v), band_sum(u * v), sum_uu, sum_vv]
        saved_v = v
    else:
        cross = torch.addcmul(X[..., 0] * Y[..., 0], X[..., 1], Y[..., 1])
        sums = [band_sum(X[..., 0]), band_sum(Y[..., 0]), band_sum(cross), sum_uu, sum_vv]
        saved_v = Y
    sums = torch.stack(sums, dim=-1).view(batch, channels, problem.num_bands, 5)
    return [sums, X, saved_v]


def _power(X: torch.Tensor) -> torch.Tensor:
    """|X|² of a real view (..., 2); two strided products beat a reduction over a size-2 axis."""
    return torch.addcmul(X[..., 0] * X[..., 0], X[..., 1], X[..., 1])


def _spectral_backward(grad_sums, input, target, X, saved_v, problem: Problem) -> list[torch.Tensor]:
    """X, saved_v: real views (..., 2) of the saved half spectra; saved_v is |Y| for amplitude."""
    spatial = tuple(input.shape[2:])
    dims = tuple(range(2, input.dim()))
    grad_sums = grad_sums.to(X.dtype)
    # the gradient of each band sum, spread over the bins of its band (a broadcast for one band)
    if problem.num_bands == 1:
        grad_sums = grad_sums.view(*grad_sums.shape[:2], *([1] * len(spatial)), 5)
    else:
        grad_sums = grad_sums[:, :, band_index(spatial, problem.num_bands, half=True).to(X.device)]
    grad_u, _, grad_uv, grad_uu, _ = grad_sums.unbind(-1)
    if problem.spectrum == "amplitude":
        u = _power(X).sqrt_()
        # d|X|/dX = X/|X|, and 0 at X = 0 (SPEC §4)
        nonzero = u > 0
        scale = torch.addcmul(grad_u, grad_uv, saved_v).div_(u.masked_fill_(~nonzero, 1)).add_(2 * grad_uu)
        grad_X = X * scale.masked_fill_(~nonzero, 0).unsqueeze(-1)
        del u, nonzero, scale
    else:
        grad_X = grad_uv.unsqueeze(-1) * saved_v + 2 * grad_uu.unsqueeze(-1) * X
        grad_X[..., 0] += grad_u
    grad_x = torch.fft.irfftn(torch.view_as_complex(grad_X), s=spatial, dim=dims, norm="ortho")
    del grad_X
    grad_x = _finish_backward(_pad_channels(grad_x, problem), _activate(input, problem), target, problem)
    return [grad_x.to(input.dtype)]
