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

from .._options import Problem
from ..bands import band_index, half_band_matrix


def unavailable_reason(device: torch.device) -> str | None:
    return None


# ----------------------------------------------------------------------------------------------
# shared steps: activation, labels, channel layout


def _compute_dtype(input: torch.Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _activate(input: torch.Tensor, problem: Problem) -> torch.Tensor:
    x = input.to(_compute_dtype(input))
    if problem.activation == "softmax":
        return torch.softmax(x, dim=1)
    if problem.activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def _activation_backward(grad_p: torch.Tensor, p: torch.Tensor, problem: Problem) -> torch.Tensor:
    if problem.activation == "softmax":
        return p * (grad_p - (p * grad_p).sum(1, keepdim=True))
    if problem.activation == "sigmoid":
        return grad_p * p * (1 - p)
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
    return _spectral_sums(input, target, problem)


def band_sums_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    batch, channels, *spatial = input.shape
    channels -= problem.offset
    dtype = _compute_dtype(input)
    sums = input.new_empty((batch, channels, problem.num_bands, 5), dtype=dtype)
    if problem.parseval:
        return [sums]
    half = (batch, channels, *spatial[:-1], spatial[-1] // 2 + 1)
    saved_v = input.new_empty(half if problem.spectrum == "amplitude" else (*half, 2), dtype=dtype)
    return [sums, input.new_empty((*half, 2), dtype=dtype), saved_v]


def band_sums_backward(grad_sums, input, target, saved, problem: Problem) -> torch.Tensor:
    p = _activate(input, problem)
    if problem.parseval:
        grad_x = _parseval_backward(grad_sums, p, input, target, problem)
    else:
        grad_x = _spectral_backward(grad_sums, input, saved, problem)
    if _is_label_map(input, target) and problem.ignore_index is not None:
        grad_x = grad_x * _labels(target, problem)[1].unsqueeze(1)
    return _activation_backward(grad_x, p, problem).to(input.dtype)


# ----------------------------------------------------------------------------------------------
# complex spectrum, one band: Σ_Ω u = √N·x[0], Σ u·v = Σ x·y (Parseval), no transform


def _parseval_sums(input, target, problem: Problem) -> torch.Tensor:
    p = _activate(input, problem).flatten(2)  # (B, C, N)
    root_n = math.sqrt(p.shape[-1])
    if _is_label_map(input, target):
        labels, valid = _labels(target.flatten(1), problem)
        weight = p.new_ones(labels.shape) if valid is None else valid.to(p.dtype)
        p = p * weight.unsqueeze(1)
        # Σ_n x·y and Σ_n y² per class, straight from the labels
        p_at_label = p.gather(1, labels.unsqueeze(1)).squeeze(1)
        sum_uv = p.new_zeros(p.shape[:2]).scatter_add_(1, labels, p_at_label)
        sum_vv = p.new_zeros(p.shape[:2]).scatter_add_(1, labels, weight)
        sum_v = p.new_zeros(p.shape[:2]).scatter_(1, labels[:, :1], weight[:, :1]) * root_n
    else:
        y = target.flatten(2).to(p.dtype)
        sum_uv = (p * y).sum(-1)
        sum_vv = (y * y).sum(-1)
        sum_v = y[..., 0] * root_n
    sums = torch.stack([p[..., 0] * root_n, sum_v, sum_uv, (p * p).sum(-1), sum_vv], dim=-1)
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
    X = torch.fft.rfftn(x, dim=dims, norm="ortho")
    Y = torch.fft.rfftn(_dense_target(input, target, problem, p.dtype), dim=dims, norm="ortho")
    if problem.spectrum == "amplitude":
        u, v = X.abs(), Y.abs()
        stats = (u, v, u * v, u * u, v * v)
        saved_v = v
    else:
        stats = (X.real, Y.real, X.real * Y.real + X.imag * Y.imag, X.abs().square(), Y.abs().square())
        saved_v = torch.view_as_real(Y)
    band_matrix = half_band_matrix(spatial, problem.num_bands).to(device=p.device, dtype=p.dtype)
    batch, channels = x.shape[:2]
    sums = torch.stack([s.reshape(batch * channels, -1) @ band_matrix for s in stats], dim=-1)
    return [sums.view(batch, channels, problem.num_bands, 5), torch.view_as_real(X), saved_v]


def _spectral_backward(grad_sums, input, saved, problem: Problem) -> torch.Tensor:
    X_real, saved_v = saved
    X = torch.view_as_complex(X_real)
    spatial = tuple(input.shape[2:])
    dims = tuple(range(2, input.dim()))
    # per-bin coefficients of SUMS' gradient: band value spread to each bin of the band
    in_band = band_index(spatial, problem.num_bands, half=True).to(input.device)
    grad_u, _, grad_uv, grad_uu, _ = grad_sums.to(X_real.dtype)[:, :, in_band].unbind(-1)
    if problem.spectrum == "amplitude":
        u = X.abs()
        phase = torch.where(u > 0, X / torch.where(u > 0, u, 1), 0)
        grad_X = (grad_u + grad_uv * saved_v + 2 * grad_uu * u) * phase
    else:
        grad_X = grad_u + grad_uv * torch.view_as_complex(saved_v) + 2 * grad_uu * X
    grad_x = torch.fft.irfftn(grad_X, s=spatial, dim=dims, norm="ortho")
    return _pad_channels(grad_x, problem)
