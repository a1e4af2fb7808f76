"""The generic fast path in plain torch ops, with a hand-written backward. CPU default; runs on CUDA.

Forward: path "parseval": SPEC §3's Parseval sums in one pass, no transform; path "fft": rfftn of
x − y and of the base (_spectra.py), then the band statistics as segment sums in two passes
(means, then centred moments); paths "fused" and "fused-parseval": the same with the amplitude's
per-bin work, or a label map's Parseval sums, in the compiled CPU kernels (_cpu_kernels.py); path
"tiny" (`is_tiny`): the fft path in float64 throughout. Backward: per-bin coefficients
(_stats.gradient_coefficients), irfftn, and the activation's Jacobian (the activation recomputed;
saved by the forward on the CPU kernels' paths). Design: docs/numerics.md, docs/cpu-kernels.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch._C._autograd import _profiler_enabled
from torch.profiler import record_function

from .._cache import TableCache
from .._options import compute_dtype, is_label_map
from .._stats import STATS, gradient_coefficients, parseval_stats
from ..bands import SPREAD, HalfGridTables, half_grid_tables
from . import _cpu_kernels
from ._spectra import activate, base_is_prediction, make_hermitian
from .registry import Problem


def _step(name: str) -> contextlib.AbstractContextManager[object]:
    """A step's label for torch.profiler (benchmarks/profile_torch_backend.py); nothing, and no
    cost (a record_function costs ~6 us), when no profiler runs."""
    return record_function(name) if _profiler_enabled() else contextlib.nullcontext()


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
        return _parseval_stats(input, target, problem)
    return _spectral_stats(*_tiny_float64(input, target, problem), problem)


def band_stats_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    batch, channels, *spatial = input.shape
    channels -= problem.offset
    dtype = compute_dtype(_tiny_float64(input, target, problem)[0].dtype)
    stats = input.new_empty((batch, channels, problem.num_bands, len(STATS)), dtype=dtype)
    saved = []
    if not problem.parseval:
        half = (*spatial[:-1], spatial[-1] // 2 + 1)
        bins = math.prod(half)
        saved = _new_saved(input.new_empty(()), problem, batch, channels, bins, dtype)
        if problem.path == "fused":  # each chunk's X (`_spectral_stats`)
            for chunk in _chunks(batch, channels * bins, input.device):
                n = len(range(*chunk.indices(batch)))
                saved.append(input.new_empty((n, channels, *half), dtype=_complex(dtype)))
    if _saves_activation(problem):
        saved.append(input.new_empty(input.shape, dtype=dtype))
    return [stats, *saved]


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
    if _saves_activation(problem):
        p = saved[-1]
    else:
        with _step("scc::activation (again)"):
            p = activate(work, problem)
    if problem.path == "fused":
        return _fused_backward(coefficients, p, target, saved, problem).to(input.dtype)
    if _kernel_labels(p, target, problem) and problem.parseval:
        with _step("scc::gradient and activation backward (fused)"):
            softmax = problem.activation == "softmax"
            coefficient = coefficients[:, :, 0].to(p.dtype).contiguous()
            grad = _cpu_kernels.label_parseval_backward(p.contiguous(), _kernel_label_map(target), coefficient, softmax)
            if not softmax:
                grad = _activation_backward_into(p.new_empty(p.shape), grad, p, problem)
            return grad.to(input.dtype)
    if problem.parseval:
        grad_x = _parseval_backward(coefficients[:, :, 0], p, target, problem)
    else:
        grad_x = _spectral_backward(coefficients, work, saved, problem)
    with _step("scc::activation backward"):
        return _finish_backward(grad_x, p, target, problem).to(input.dtype)


def _finish_backward(grad_x: torch.Tensor, p: torch.Tensor, target: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Gradient w.r.t. the probabilities (a fresh tensor, changed in place) → w.r.t. the input:
    ignored positions, activation."""
    if is_label_map(p, target) and problem.ignore_index is not None:
        grad_x.mul_(_valid(target, problem.ignore_index).unsqueeze(1))
    return _activation_backward(grad_x, p, problem)


# ----------------------------------------------------------------------------------------------
# complex spectrum, one band: sums over the samples but the origin (_stats.parseval_stats)


def _parseval_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """PARSEVAL_SUMS per (b, c) → [STATS (B, C', 1, 8)], and the activation's output where the
    backward reads it (`_saves_activation`). x − y is formed exactly, sample by sample (never a
    difference of sums), in place of x once x's own sums are taken, unless x is kept; on the
    "fused-parseval" path, a label map's sums in the CPU kernels, in one pass, in double."""
    p = activate(input, problem)
    kept = [p] if _saves_activation(problem) else []
    if _kernel_labels(input, target, problem):
        p = p.contiguous()
        sums = _cpu_kernels.label_parseval_sums(p, _kernel_label_map(target), problem.offset)
        return [parseval_stats(sums, p[0, 0].numel()).to(p.dtype).unsqueeze(2), *kept]
    x = p.flatten(2)
    # x − y may replace x: not the caller's input, nor the saved activation
    owned = x.untyped_storage().data_ptr() != input.untyped_storage().data_ptr() and not kept
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
    return [parseval_stats(sums[:, problem.offset :], x.shape[-1]).unsqueeze(2), *kept]  # (B, C', 1, 8)


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
# Recomputing them costs more, but for u on the "fused" path: its CPU kernels take |X| again.
PLANES = {"amplitude": 3, "complex": 6, "fused": 2}
# Half-spectrum values per group of batch elements transformed together on a CPU (one element at
# least): each bin-sized temporary then stays about 0.5 MiB, within a core's L2 cache (measured
# here: 2**20 values per group ran 1.5-2x slower than 2**17 at 8x4x256x256). On a GPU the whole
# batch is one group: every group costs each op a launch.
CHUNK_BINS = 2**17


def _channel_groups(batch: int, channels: int, bins: int, device: torch.device, problem: Problem) -> list[slice]:
    """Slices of the channels whose bins a chunk of `batch` elements processes together after its
    transforms: all of them, unless one element's channels exceed twice CHUNK_BINS on a CPU (3D),
    then equal groups of at most about CHUNK_BINS values, so the per-bin temporaries stay in the
    core's L2 cache (at 2x4x64^3 each would be 2-4 MiB otherwise). Each group costs every per-bin
    op a call: 8x4x256x256 (just over CHUNK_BINS an element) stays one group."""
    if device.type != "cpu" or batch > 1 or channels * bins <= 2 * CHUNK_BINS or problem.path == "fused":
        return [slice(0, channels)]  # the CPU kernels make no per-bin temporaries
    groups = min(channels, math.ceil(channels * bins / CHUNK_BINS))
    size = math.ceil(channels / groups)
    return [slice(start, min(start + size, channels)) for start in range(0, channels, size)]


def _chunks(batch: int, per_item: int, device: torch.device) -> list[slice]:
    """Slices of the batch, each of about CHUNK_BINS values on a CPU (one batch element at least)."""
    size = batch if device.type != "cpu" else max(1, CHUNK_BINS // max(per_item, 1))
    return [slice(start, min(start + size, batch)) for start in range(0, batch, max(size, 1))]


def _spectral_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """[STATS (B, C', K, 8), saved (`_new_saved`)] from the transforms of the base and of x − y
    (_spectra.py), a chunk of the batch at a time.

    Where every slice's base is the prediction (decided on a CPU, where reading it back costs no
    device sync), X is the transform of x itself, written straight into the saved tensor, and a
    label map's x − y is formed in place of x (the activation's own output) after that transform:
    no dense target, no base tensor, no copy of X. On the "fused" path the CPU kernels choose a
    label map's bases and form x − y (and the base) apart, chunk by chunk; the activation's output
    is saved for the backward; they compute the bins' values and statistics (`_fused_stats`); and
    X is saved chunk by chunk, as the transform wrote it (a whole-batch rfftn ran 2x slower than
    the chunks at 8x4x256x256 where its output was fresh memory, and a copy costs a pass)."""
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    label_map = is_label_map(input, target)
    kernel_labels = _kernel_labels(input, target, problem)
    with _step("scc::activation"):
        p = activate(input, problem)
        owned = p.untyped_storage().data_ptr() != input.untyped_storage().data_ptr()  # not the caller's input
        if kernel_labels:
            p, labels = p.contiguous(), _kernel_label_map(target)
        x = p[:, problem.offset :]
        if label_map and problem.ignore_index is not None:
            x = x * _valid(target, problem.ignore_index).unsqueeze(1)
    base_is_x, all_x = None, False  # on the kernels' labels, chosen with each chunk's signals
    if not kernel_labels:
        with _step("scc::base choice"):
            base_is_x = base_is_prediction(input, target, problem, x)
            all_x = input.device.type == "cpu" and bool(base_is_x.all())
    # x − y formed in place of x (the activation's own output), unless the backward reads it
    in_place = all_x and owned and label_map and problem.ignore_index is None and not _saves_activation(problem)
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    batch, channels = x.shape[:2]
    half = (channels, *spatial[:-1], spatial[-1] // 2 + 1)
    stats = x.new_empty((batch, channels, problem.num_bands, len(STATS)))
    saved = _new_saved(x, problem, batch, channels, tables.band.numel(), x.dtype)
    for chunk in _chunks(batch, channels * tables.band.numel(), input.device):
        x_c = x[chunk]
        with _step("scc::signals"):
            flags = None if base_is_x is None or all_x else base_is_x[chunk]
            if kernel_labels:
                bounded = problem.activation != "none"
                flags, base, difference = _cpu_kernels.label_signals(p[chunk], labels[chunk], problem.offset, bounded)
                base = x_c if base is None else base
            elif in_place:
                base = x_c
            else:
                y_c = _dense_target(input[chunk], target[chunk], problem, x.dtype)
                base = x_c if flags is None else torch.where(_per_slice(flags, len(dims)), x_c, y_c)
        with _step("scc::rfftn"):
            out = None  # X straight into the saved tensor where it is S (the fused path saves S itself)
            if all_x and problem.spectrum == "amplitude" and problem.path != "fused":
                out = torch.view_as_complex(saved[0][chunk]).view(-1, *half)
            S = torch.fft.rfftn(base, dim=dims, norm="ortho", out=out)
            if problem.path != "fused":  # the CPU kernels make S and D Hermitian as they read them
                make_hermitian(S, spatial[-1])
        del base
        with _step("scc::signals"):
            if in_place:  # x − y in place of x: the label's channel − 1 (as x − y rounds it)
                p_c = p[chunk]
                labels = target[chunk].reshape(p_c.shape[0], 1, *spatial).long()
                p_c.scatter_add_(1, labels, p_c.new_full((), -1.0).expand(labels.shape))
                difference = p_c[:, problem.offset :]
            elif not kernel_labels:
                difference = x_c - y_c
                del y_c
        with _step("scc::rfftn"):
            D = torch.fft.rfftn(difference, dim=dims, norm="ortho")
            if problem.path != "fused":
                make_hermitian(D, spatial[-1])
        del difference
        for group in _channel_groups(S.shape[0], channels, tables.band.numel(), input.device, problem):
            group_flags = None if flags is None else flags[:, group]
            if problem.path == "fused":
                with _step("scc::bin values and band stats (fused)"):
                    group_stats = _fused_stats(
                        S[:, group], D[:, group], group_flags, saved, (chunk, group), spatial, problem
                    )
            else:
                with _step("scc::bin values"):
                    values, real = _bin_values(S[:, group], D[:, group], group_flags, saved, (chunk, group))
                with _step("scc::band stats"):
                    group_stats = _centred_stats(values, real, tables, spatial, problem.num_bands)
            stats[chunk, group] = group_stats.view(S.shape[0], -1, problem.num_bands, len(STATS))
        if problem.path == "fused":  # S is now X: saved as it is, chunk by chunk (no copy)
            saved.append(S)
        del S, D
    return [stats, *saved, p] if _saves_activation(problem) else [stats, *saved]


KERNEL_PATHS = ("fused", "fused-parseval")  # the paths that call the CPU kernels (_cpu_kernels.py)


def _saves_activation(problem: Problem) -> bool:
    """Whether the forward saves the activation's output for the backward (the last saved
    tensor): on the CPU kernels' paths, where they form x − y apart from it; elsewhere the
    backward takes it again (x − y is formed in place of it)."""
    return problem.path in KERNEL_PATHS and problem.activation != "none"


def _kernel_labels(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> bool:
    """Whether the CPU kernels read a label map's classes from the labels themselves (on their
    paths, without ignore_index: torch masks the ignored samples)."""
    return problem.path in KERNEL_PATHS and is_label_map(input, target) and problem.ignore_index is None


def _kernel_label_map(target: torch.Tensor) -> torch.Tensor:
    """A label map (B, *S) as the CPU kernels read it: (B, N) int64, contiguous."""
    return target.reshape(target.shape[0], -1).long().contiguous()


def _per_slice(flags: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(n, C') → (n, C', 1, ...): broadcast over the spatial axes."""
    return flags.view(*flags.shape, *([1] * spatial_dims))


def _new_saved(
    like: torch.Tensor, problem: Problem, batch: int, channels: int, bins: int, dtype: torch.dtype
) -> list[torch.Tensor]:
    """The tensors the backward reads (PLANES), uninitialised: [planes] for the complex spectrum
    and on the "fused" path (where `_spectral_stats` appends each chunk's X, the transform itself),
    [X interleaved, planes] for the amplitude."""
    planes = like.new_empty(
        (PLANES["fused" if problem.path == "fused" else problem.spectrum], batch, channels, bins), dtype=dtype
    )
    if problem.spectrum == "complex" or problem.path == "fused":
        return [planes]
    return [like.new_empty((batch, channels, bins, 2), dtype=dtype), planes]


# u, v and d of every bin, each as (real part, imaginary part or None): `_bin_values`' result
_Part = tuple[torch.Tensor, torch.Tensor | None]
_BinValues = tuple[_Part, _Part, _Part]


def _bin_values(
    S: torch.Tensor,
    D: torch.Tensor,
    base_is_x: torch.Tensor | None,
    saved: list[torch.Tensor],
    chunk: tuple[slice, slice],
) -> tuple[_BinValues, torch.Tensor]:
    """u, v and d of every bin, as (real part, imaginary part or None) each (rows, M), and the
    three real parts as one (3, rows, M) view, from the
    complex half spectra S, D (n, c, *half) of a chunk of the batch and a group of its channels
    (`chunk`, _spectra.py), written into their rows of the saved tensors (`_new_saved`), what
    the backward reads.

    X = S + D·[base is y], Y = S − D·[base is x] (`base_is_x` None: the base is x in every slice,
    X = S, already in the saved tensor for the amplitude). Amplitude: d = (|X|² − |Y|²)/(|X| + |Y|)
    with |X|² − |Y|² = Re(D·conj(X + Y)), every term of the size of D (X = Y = 0 means D = 0: d = 0).
    X and Y are formed interleaved, the values the statistics read are planar and contiguous:
    CPU kernels on strided real or imaginary parts run 3-10x slower.
    """
    planes = saved[-1][(slice(None), *chunk)].flatten(1, 2)
    rows = planes.shape[1]
    S, D = torch.view_as_real(S.reshape(rows, -1)), torch.view_as_real(D.reshape(rows, -1))
    if base_is_x is None:
        to_x = to_y = None
    else:
        to_y = base_is_x.reshape(rows, 1, 1).to(planes.dtype)
        to_x = 1 - to_y
    if len(saved) == 1:  # complex spectrum: X, Y, D as planes
        xr, xi, yr, yi, dr, di = planes
        dr.copy_(D[..., 0])
        di.copy_(D[..., 1])
        for out_x, out_y, part, d_part in zip((xr, xi), (yr, yi), S.unbind(-1), (dr, di)):
            if to_x is None or to_y is None:
                out_x.copy_(part)
                torch.sub(part, d_part, out=out_y)
            else:
                torch.addcmul(part, d_part, to_x[..., 0], out=out_x)
                torch.addcmul(part, d_part, to_y[..., 0], value=-1, out=out_y)
        return ((xr, xi), (yr, yi), (dr, di)), planes[0::2]
    u, v, d = planes
    if to_x is None or to_y is None:
        X, Y = S, torch.sub(S, D)  # S is the saved X (`_spectral_stats`)
    else:
        X = torch.addcmul(S, D, to_x, out=saved[0][chunk].flatten(0, 1))
        Y = torch.addcmul(S, D, to_y, value=-1)
    _amplitude(X, out=u)
    _amplitude(Y, out=v)
    Y.add_(X).mul_(D)  # Re(D·conj(X + Y)) = sum of the products of the parts
    torch.add(Y[..., 0], Y[..., 1], out=d)
    d.div_(torch.add(u, v).clamp_min_(torch.finfo(d.dtype).tiny))
    return ((u, None), (v, None), (d, None)), planes


def _fused_stats(
    S: torch.Tensor,
    D: torch.Tensor,
    base_is_x: torch.Tensor | None,
    saved: list[torch.Tensor],
    chunk: tuple[slice, slice],
    spatial: tuple[int, ...],
    problem: Problem,
) -> torch.Tensor:
    """`_bin_values` and `_centred_stats` of the amplitude spectrum in the CPU kernels: STATS
    (rows, K, 8), v and d written into the saved planes' rows but not centred (the backward kernel
    centres them), and X in place of S (the caller saves it)."""
    rows = S.shape[0] * S.shape[1]
    planes = saved[0][(slice(None), *chunk)].flatten(1, 2)
    S, D = torch.view_as_real(S.reshape(rows, -1)), torch.view_as_real(D.reshape(rows, -1))
    return _cpu_kernels.amplitude_forward(S, D, base_is_x, planes, spatial, problem.num_bands)


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _amplitude(Z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """|Z| of interleaved values (rows, M, 2) → (rows, M)."""
    squares = Z * Z
    return torch.add(squares[..., 0], squares[..., 1], out=out).sqrt_()


# Multi-band sums as one matrix product with the (K, M) table of each bin's Hermitian weight in its
# band's row, for at most GEMM_BANDS bands and while that table stays under GEMM_TABLE_VALUES
# values (else a segment sum, index_add_): reading it costs K values per bin, so it pays while K
# is small (measured: 4 and 8 bands at 8x4x256x256 and 2x4x64^3), and it is held in the table cache.
GEMM_BANDS = 16
GEMM_TABLE_VALUES = 2**22


@TableCache
def _band_matrix(spatial: tuple[int, ...], num_bands: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(K, M): each half-grid bin's Hermitian weight in the row of its band, 0 elsewhere."""
    tables = half_grid_tables(spatial, num_bands, device)
    matrix = torch.zeros((num_bands, tables.band.numel()), dtype=dtype, device=device)
    return matrix.scatter_(0, tables.band.unsqueeze(0), tables.weight.to(dtype).unsqueeze(0))


def _band_sums(values: torch.Tensor, tables: HalfGridTables, spatial: tuple[int, ...], num_bands: int) -> torch.Tensor:
    """Σ over the bins of each band of w·values (w the Hermitian weight, 1 or 2): (R, M) → (R, K).

    One band: 2·Σ values − Σ over the self-mirrored columns (weight 1), a cascade sum with no
    weighted copy. A few bands: one product with `_band_matrix`. Many: a segment sum by band index
    (index_add_) of the weighted values."""
    if num_bands == 1:
        last = spatial[-1] // 2 + 1
        # the self-mirrored columns: 0, and last - 1 for an even length (columns 0:last:last-1)
        edges = values.view(*values.shape[:-1], -1, last)[..., :: max(last - 1, 1)]
        if spatial[-1] % 2 and last > 1:
            edges = edges[..., :1]
        total: torch.Tensor = 2 * values.sum(-1) - edges.sum((-2, -1))
        return total.unsqueeze(-1)
    if values.dim() > 2 and values.stride(0) != values.shape[1] * values.stride(1):  # planes apart: one by one
        return torch.stack([_band_sums(part, tables, spatial, num_bands) for part in values])
    # with the table (K, M) in memory: 4x faster than (M, K)
    if num_bands <= GEMM_BANDS and values.shape[-1] * num_bands <= GEMM_TABLE_VALUES:
        flat = values.reshape(-1, values.shape[-1])
        sums = flat @ _band_matrix(spatial, num_bands, values.device, values.dtype).T
        return sums.reshape(*values.shape[:-1], num_bands)
    weighted = (values * tables.weight.to(values.dtype)).flatten(0, -2)
    sums = weighted.new_zeros((weighted.shape[0], num_bands * SPREAD)).index_add_(1, tables.band_spread, weighted)
    return sums.view(*values.shape[:-1], num_bands, SPREAD).sum(-1)


def _per_bin(values: torch.Tensor, tables: HalfGridTables, num_bands: int) -> torch.Tensor:
    """Each band's value at each of its bins: (S, K) → (S, M) (broadcastable (S, 1) for one band)."""
    if num_bands == 1:
        return values
    return values.gather(-1, tables.band.expand(*values.shape[:-1], -1))  # 3-8x faster here than index_select


def _centred_stats(
    values: _BinValues, real: torch.Tensor, tables: HalfGridTables, spatial: tuple[int, ...], num_bands: int
) -> torch.Tensor:
    """STATS (B·C', K, 8) of the flat bin values of `_bin_values`: band means first, then the
    moments about them (two passes), each Hermitian-weighted. The real parts of v and d are
    centred in place (the backward reads them centred); u's stay as they are (the backward
    divides by |X|)."""
    (ur, ui), (vr, vi), (dr, di) = values
    rows = ur.shape[0]
    counts = tables.counts.to(ur.dtype)
    mean_u, mean_v, mean_d = (_band_sums(real, tables, spatial, num_bands) / counts.clamp(min=1)).unbind(0)
    du = ur - _per_bin(mean_u, tables, num_bands)
    vr.sub_(_per_bin(mean_v, tables, num_bands))
    dr.sub_(_per_bin(mean_d, tables, num_bands))
    pairs = [(du, du), (vr, vr), (du, vr), (dr, dr)]
    if ui is not None and vi is not None and di is not None:  # complex spectrum: the imaginary parts, means 0
        pairs += [(ui, ui), (vi, vi), (ui, vi), (di, di)]
    # the products two at a time: one band-sum call per two moments, two bin-sized planes alive
    products = ur.new_empty((2, rows, ur.shape[1]))
    sums = []
    for start in range(0, len(pairs), 2):
        for product, (a, b) in zip(products, pairs[start : start + 2]):
            torch.mul(a, b, out=product)
        sums.append(_band_sums(products.view(-1, ur.shape[1]), tables, spatial, num_bands).view(2, rows, num_bands))
    m2 = torch.cat(sums)
    if len(pairs) > 4:
        m2 = m2[:4] + m2[4:]
    count = counts.expand(rows, num_bands)
    return torch.stack([count, mean_u, mean_v, mean_d, *m2.unbind(0)], dim=-1)


def _fused_backward(
    coefficients: torch.Tensor, p: torch.Tensor, target: torch.Tensor, saved: Sequence[torch.Tensor], problem: Problem
) -> torch.Tensor:
    """The "fused" path's gradient w.r.t. the input (B, C, *S), a chunk of the batch at a time:
    each bin's gradient in the CPU kernels, irfftn, and the activation's backward, for softmax in
    the kernels straight from irfftn's output (no copy of it into a gradient w.r.t. p)."""
    spatial, dims = tuple(p.shape[2:]), tuple(range(2, p.dim()))
    planes = saved[0]  # then each chunk's X (`_spectral_stats`)
    channels, bins = planes.shape[2:]
    valid = None
    if is_label_map(p, target) and problem.ignore_index is not None:
        valid = _valid(target, problem.ignore_index).unsqueeze(1)
    grad = torch.empty_like(p)
    chunks = _chunks(p.shape[0], channels * bins, p.device)
    for chunk, X in zip(chunks, saved[1 : 1 + len(chunks)]):
        grad_X = torch.empty_like(X)
        with _step("scc::bin gradient (fused)"):
            coefficient = coefficients[chunk].to(p.dtype).flatten(0, 1).contiguous()
            rows = (torch.view_as_real(X).view(-1, bins, 2), planes[:, chunk].flatten(1, 2))
            _cpu_kernels.amplitude_backward(coefficient, *rows, spatial, torch.view_as_real(grad_X).view(-1, bins, 2))
        with _step("scc::irfftn"):
            grad_p = torch.fft.irfftn(grad_X, s=spatial, dim=dims, norm="ortho")
            if valid is not None:
                grad_p.mul_(valid[chunk])
        with _step("scc::activation backward"):
            _activation_backward_into(grad[chunk], grad_p, p[chunk], problem)
    return grad


def _activation_backward_into(
    out: torch.Tensor, grad_p: torch.Tensor, p: torch.Tensor, problem: Problem
) -> torch.Tensor:
    """The gradient w.r.t. the input into out (B, C, *S) from grad_p of channels offset: and the
    activation's output p: for softmax in the CPU kernels, in one pass."""
    if problem.activation == "softmax":
        _cpu_kernels.softmax_backward(p, grad_p, problem.offset, out=out)
        return out
    out[:, : problem.offset] = 0
    out[:, problem.offset :] = grad_p
    return _activation_backward(out, p, problem)


def _spectral_backward(
    coefficients: torch.Tensor, input: torch.Tensor, saved: Sequence[torch.Tensor], problem: Problem
) -> torch.Tensor:
    """Gradient w.r.t. p (B, C, *S) from COEFFICIENTS (B, C', K, 7) and the saved tensors
    (`_new_saved`): per bin, then irfftn, a chunk of the batch at a time (the background channel,
    if dropped, is 0)."""
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    planes = saved[0] if problem.spectrum == "complex" else saved[1]  # `_new_saved`
    grad = planes.new_empty(input.shape)
    grad[:, : problem.offset] = 0
    channels, bins = planes.shape[2:]

    def at_bins(per_band: torch.Tensor) -> torch.Tensor:  # (rows, K) → (rows, M), or (rows, 1) for one band
        return _per_bin(per_band, tables, problem.num_bands)

    for chunk in _chunks(input.shape[0], channels * bins, input.device):
        n = len(range(*chunk.indices(input.shape[0])))
        grad_X = torch.empty((n, channels, bins), dtype=_complex(planes.dtype), device=planes.device)
        for group in _channel_groups(n, channels, bins, input.device, problem):
            with _step("scc::bin gradient"):
                coefficient = coefficients[chunk, group].to(planes.dtype).flatten(0, 1).unbind(-1)  # (rows, K) each
                c_mean, c_uu, c_uv, c_dd, mean_u, _, _ = coefficient  # v and d are saved centred
                values = planes[:, chunk, group].flatten(1, 2)
                out = grad_X[:, group].flatten(0, 1)
                if problem.spectrum == "amplitude":
                    ur, vr, dr = values
                else:
                    xr, xi, vr, vi, dr, di = values
                    ur = xr
                # the real parts of v and d are saved centred (`_centred_stats`), u's as they are
                # each band's value at its bins, one at a time (at most two bin-sized tables alive)
                grad_re = torch.sub(ur, at_bins(mean_u))
                c_uu = at_bins(c_uu)
                torch.addcmul(at_bins(c_mean), grad_re, c_uu, out=grad_re)
                grad_re.addcmul_(vr, at_bins(c_uv)).addcmul_(dr, at_bins(c_dd))
                if problem.spectrum == "amplitude":  # d|X|/dX = X/|X|, and 0 at X = 0 (SPEC §4)
                    scale = grad_re.div_(ur).masked_fill_(ur == 0, 0)
                    torch.mul(torch.view_as_complex(saved[0][chunk, group].flatten(0, 1)), scale, out=out)
                else:
                    grad_im = (xi * c_uu).addcmul_(vi, at_bins(c_uv)).addcmul_(di, at_bins(c_dd))
                    torch.complex(grad_re, grad_im, out=out)
        with _step("scc::irfftn"):
            half = (-1, channels, *spatial[:-1], spatial[-1] // 2 + 1)
            out = grad[chunk]
            if problem.offset == 0:  # straight into the gradient
                torch.fft.irfftn(grad_X.view(half), s=spatial, dim=dims, norm="ortho", out=out)
            else:
                out[:, problem.offset :] = torch.fft.irfftn(grad_X.view(half), s=spatial, dim=dims, norm="ortho")
    return grad
