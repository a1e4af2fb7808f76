"""Functional API and the one dispatch point.

options → (checked tensors) → backend: the reference computes r directly with autograd; a
fast backend runs as the custom op `scc_kernels::spectral_stats` (ops.py: registered with
torch.library, with a fake implementation and its own autograd, so torch.compile keeps one graph)
on the backend and path planning.resolve chose, and _stats.loss_from_stats turns its band
statistics into 1 − r. The loss is formed as 1 − r
directly, never as 1 minus a rounded r (SPEC §4); `spectral_correlation` returns 1 minus it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from . import reference
from ._options import (
    SCCOptions,
    binary_as_two_classes,
    compute_dtype,
    documented,
    is_label_map,
    make_options,
    prepare,
)
from ._stats import STATS, loss_from_stats, with_flat_targets
from .backends import _cpu_kernels
from .backends.registry import Problem
from .ops import spectral_stats
from .planning import resolve


@documented
def spectral_correlation(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    spectrum: str = "amplitude",
    bands: int | None = None,
    band_weights: Sequence[float] | torch.Tensor | None = None,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    to_onehot_y: bool = False,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch: bool = False,
    sync_batch: bool = False,
    process_group: object | None = None,
    eps: float = 1e-5,
    backend: str = "auto",
) -> torch.Tensor:
    """The spectral correlation coefficient r in [-1, 1] (SPEC §3), band-averaged: what
    `scc_loss` is 1 minus, before the reduction.

    Args:
        input: the prediction (B, C, *spatial), 1 to 3 spatial dims, logits or probabilities.
        target: the ground truth: the shape of `input` (one-hot, soft or binary masks), or an
            integer label map (B, *spatial) or (B, 1, *spatial).
        {options}

    Returns:
        r of shape (B, C'), or (C',) with `batch=True`; float32 (float64 for float64 input).

    Raises:
        {raises}
    """
    # keyword by keyword, not from locals(): torch 2.11's dynamo cannot trace locals()
    opts = make_options(
        spectrum=spectrum,
        bands=bands,
        band_weights=band_weights,
        sigmoid=sigmoid,
        softmax=softmax,
        other_act=other_act,
        to_onehot_y=to_onehot_y,
        include_background=include_background,
        ignore_index=ignore_index,
        batch=batch,
        sync_batch=sync_batch,
        process_group=process_group,
        eps=eps,
        backend=backend,
    )
    return correlation(input, target, opts)


@documented
def scc_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    spectrum: str = "amplitude",
    bands: int | None = None,
    band_weights: Sequence[float] | torch.Tensor | None = None,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    to_onehot_y: bool = False,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch: bool = False,
    sync_batch: bool = False,
    process_group: object | None = None,
    eps: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """The SCC loss 1 - r (SPEC §3): one minus the correlation of the Fourier spectra of the
    prediction and the target, per (item, class) or per class, then reduced.

    Example::

        loss = scc_loss(logits, labels, softmax=True, bands=4)  # logits (B, C, H, W), labels (B, H, W)

    Args:
        input: the prediction (B, C, *spatial), 1 to 3 spatial dims, logits or probabilities.
        target: the ground truth: the shape of `input` (one-hot, soft or binary masks), or an
            integer label map (B, *spatial) or (B, 1, *spatial).
        {options}
        reduction: "mean" or "sum" over the per-(item, class) losses, or "none" to return them.

    Returns:
        The loss in [0, 2]: a scalar, or (B, C') with reduction="none" ((C',) with `batch=True`);
        float32 (float64 for float64 input), NaN where the input holds NaN or inf. No gradient
        flows to `target`.

    Raises:
        {raises}
    """
    # keyword by keyword, not from locals(): torch 2.11's dynamo cannot trace locals()
    opts = make_options(
        spectrum=spectrum,
        bands=bands,
        band_weights=band_weights,
        sigmoid=sigmoid,
        softmax=softmax,
        other_act=other_act,
        to_onehot_y=to_onehot_y,
        include_background=include_background,
        ignore_index=ignore_index,
        batch=batch,
        sync_batch=sync_batch,
        process_group=process_group,
        eps=eps,
        reduction=reduction,
        backend=backend,
    )
    return loss(input, target, opts)


def loss(input: torch.Tensor, target: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    per_item = per_item_loss(input, target, opts)
    if opts.reduction == "mean":
        return per_item.mean()
    if opts.reduction == "sum":
        return per_item.sum()
    return per_item


def correlation(input: torch.Tensor, target: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    return 1 - per_item_loss(input, target, opts)


def per_item_loss(input: torch.Tensor, target: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    """The per-item loss 1 − r, (B, C') or (C',) with `batch=True`."""
    input, target, opts = prepare(input, target, opts)
    target = target.detach()  # SPEC §4: the target is a constant of the loss, on every backend
    if opts.other_act is not None:
        input = opts.other_act(input)
    if opts.binary_label_map:
        input, opts = binary_as_two_classes(input, opts)
    if input.numel() == 0 and not opts.sync_batch:
        return _no_bins(input, opts)
    route = resolve(opts.backend, input, opts)
    with torch.autocast(input.device.type, enabled=False):  # SPEC §4: we choose the precision
        if route.backend == "reference":
            return 1 - reference.band_weighted_r(input, target, opts)
        if input.numel() == 0:  # an empty rank under sync_batch: still joins the merge (SPEC §5)
            return _no_bins(input, opts)
        problem = Problem(
            opts.spectrum, opts.num_bands, opts.activation, opts.ignore_index, opts.include_background, route.path
        )
        stats, *_ = spectral_stats(input, target, route.backend, problem)
        if opts.spectrum == "amplitude":
            stats = with_flat_targets(stats, *_flat_target_bands(input, target, opts, route.path))
        return loss_from_stats(stats, opts).to(compute_dtype(input.dtype))  # tiny slices: float64 stats


def _flat_target_bands(
    input: torch.Tensor, target: torch.Tensor, opts: SCCOptions, path: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target slice's amplitude spectrum is flat over a band, and its value there:
    ((B, C', K) bool, (B, C')), for _stats.with_flat_targets. A target y = c + b·δ_p (the same
    value at all samples but at most one: a class on one pixel, on all but one, or on none) has
    |Y_k| = |b|/√N at every bin but the origin, which is in band 0, and there too when c = 0.
    A pass or three over the target, after the op checked the labels."""
    batch, classes = input.shape[:2]
    n = math.prod(input.shape[2:])
    if is_label_map(input, target):  # y ∈ {0, 1}: c + b·δ when at most one sample is 1, or is 0
        labels = target.reshape(batch, -1).long()
        # opts.ignore_index is one the label dtype can hold (prepare): compared exactly here
        # the CPU kernels count in one pass, 4x a scatter's speed (exact integers either way); not
        # in a torch.compile graph, which cannot trace a ctypes call outside the custom op
        if opts.ignore_index is None and path == "fused" and not torch.compiler.is_compiling():
            counts = _cpu_kernels.label_counts(labels.contiguous(), classes)
        elif opts.ignore_index is None:
            counts = labels.new_zeros((batch, classes)).scatter_add_(
                1, labels, labels.new_ones(()).expand(labels.shape)
            )
        else:
            kept = (labels != opts.ignore_index).long()
            counts = labels.new_zeros((batch, classes)).scatter_add_(1, labels * kept, kept)
        zero_base = counts <= 1
        one_pixel_or_less = zero_base | (counts >= n - 1)
        step = torch.where(zero_base, counts, n - counts)
    else:
        y = target.reshape(batch, classes, -1)
        first, second = y[..., :1], y[..., min(1, n - 1) :][..., :1]
        base = torch.where(torch.count_nonzero(y != first, dim=-1).unsqueeze(-1) <= 1, first, second)
        one_pixel_or_less = torch.count_nonzero(y != base, dim=-1) <= 1
        zero_base = base.squeeze(-1) == 0
        step = (y - base).sum(-1).abs()
    offset = 0 if opts.include_background else 1
    outer = torch.arange(opts.num_bands, device=input.device) > 0  # the bands without the origin
    flat = one_pixel_or_less.unsqueeze(-1) & (outer | zero_base.unsqueeze(-1))
    return flat[:, offset:], (step / math.sqrt(n))[:, offset:]


def _no_bins(input: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    """An empty input has no bins: statistics of count 0 in every band, so r = 1 (SPEC §3 step
    6) and the loss 0 for every (b, c) or class, with a zero gradient; under sync_batch they
    merge with the other ranks' (connected to `input`, so that the gather's backward, a
    collective, runs on this rank too). Handled here once: torch.fft refuses empty tensors."""
    batch, channels = input.shape[:2]
    channels -= 0 if opts.include_background else 1
    shape = (batch, channels, opts.num_bands, len(STATS))
    stats = torch.zeros(shape, dtype=compute_dtype(input.dtype), device=input.device)
    return loss_from_stats(stats + 0 * input.sum(), opts)
