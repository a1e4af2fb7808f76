"""What the Triton files (triton_parseval.py, triton_dft.py, triton_fft.py) share.

@triton.jit helpers: how a kernel reads its input (`label_map`, `load_pair`, ACTIVATION's values
SOFTMAX and SIGMOID), the per-bin statistics and gradient of the transform paths (`bin_values`,
`store_tile_stats`, `bin_gradient`), and a program's place on the 1-D grid (`block_index`).
Host side: the 1-D grid (`grid`), the input's kernel arguments (`input_args`), the CUDA device
guard (`device_guard`), and the elementwise kernel that finishes both transform paths'
gradients (`_finish_kernel`, launched by `finish_gradient`).
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from .._options import ACTIVATION_CODES, is_label_map
from .registry import Problem

SOFTMAX = tl.constexpr(ACTIVATION_CODES["softmax"])  # the values of the kernels' ACTIVATION constexpr
SIGMOID = tl.constexpr(ACTIVATION_CODES["sigmoid"])
FINISH_BLOCK = 1024  # pixels per _finish_kernel program, at least: its pixel blocks are grid axis 1 (≤ 65535)

# ----------------------------------------------------------------------------------------------
# kernels and @triton.jit helpers


@triton.jit
def label_map(t_ptr, b, N, pix, mask, ignore_index, HAS_IGNORE: tl.constexpr):
    """The labels of batch item b at `pix` (int64) and the pixels that count: in range (`mask`) and,
    with HAS_IGNORE, not ignore_index. Compared in int64: an ignore_index beyond int32 must not match
    a truncated label."""
    label = tl.load(t_ptr + b.to(tl.int64) * N + pix, mask=mask, other=0).to(tl.int64)
    keep = mask
    if HAS_IGNORE:
        keep = keep & (label != ignore_index)
    return label, keep


@triton.jit
def _channel_max(logits, mask, C, N):
    """The softmax's shift: the largest of the C logits of each pixel (`logits` points at channel 0's,
    the channels N apart), float32."""
    top = tl.full(mask.shape, float("-inf"), tl.float32)
    for _ in range(C):
        top = tl.maximum(top, tl.load(logits, mask=mask, other=0.0).to(tl.float32))
        logits += N
    return top


@triton.jit
def load_pair(
    x_ptr,
    t_ptr,
    b,
    c,
    C,
    N,
    pix,
    mask,
    ignore_index,
    ACTIVATION: tl.constexpr,
    LABEL_MAP: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
):
    """Prediction x (activated, 0 at ignored and padding pixels) and target y (0 at padding) of
    channel c at pixels `pix` (any block shape) of batch item b, both float32.

    One channel, what a DFT tile transforms; the softmax reads the other channels for its max and
    sum. (triton_parseval._load_tile holds every channel of its pixels at once instead.)
    Channel offsets are 64-bit (pointer steps, int64 products): C·N may pass 2³¹.
    """
    item = b.to(tl.int64) * C * N
    channel = c.to(tl.int64) * N
    p = tl.load(x_ptr + item + channel + pix, mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION == SOFTMAX:  # over the C channels of each pixel
        top = _channel_max(x_ptr + item + pix, mask, C, N)
        total = tl.zeros(p.shape, tl.float32)
        logits = x_ptr + item + pix
        for _ in range(C):
            total += tl.exp(tl.load(logits, mask=mask, other=0.0).to(tl.float32) - top)
            logits += N
        p = tl.exp(p - top) / total
    elif ACTIVATION == SIGMOID:
        p = tl.sigmoid(p)
    if LABEL_MAP:
        label, keep = label_map(t_ptr, b, N, pix, mask, ignore_index, HAS_IGNORE)
        y = ((label == c) & keep).to(tl.float32)
        if HAS_IGNORE:
            p = p * keep.to(tl.float32)  # a product, not a select: NaN at an ignored pixel reaches the loss
    else:
        y = tl.load(t_ptr + item + channel + pix, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, p, 0.0), y


@triton.jit
def bin_values(sr, si, dr, di, base_is_x, AMPLITUDE: tl.constexpr):
    """conj(X), conj(Y) and the real parts of u, v, d per bin, from conj(S), conj(D) (_spectra.py:
    X, Y = S, S − D if the base is x, else S + D, S). The imaginary parts of u, v, d (complex
    spectrum only) are those of X, Y, D. Conjugating every spectrum changes no statistic."""
    xr = tl.where(base_is_x, sr, sr + dr)
    xi = tl.where(base_is_x, si, si + di)
    yr = tl.where(base_is_x, sr - dr, sr)
    yi = tl.where(base_is_x, si - di, si)
    if AMPLITUDE:
        # correctly rounded sqrt and division (`tl.sqrt`, `/` compile to sqrt.approx, div.full: 2 ulp, and
        # the interpreter, numpy, rounds correctly): the statistics are not the hot path
        u_re = tl.sqrt_rn(xr * xr + xi * xi)
        v_re = tl.sqrt_rn(yr * yr + yi * yi)
        # d = (|X|² − |Y|²)/(|X| + |Y|) with |X|² − |Y|² = 2·Re(D·conj X) − |D|²: every term of D's size
        power_difference = 2.0 * (dr * xr + di * xi) - (dr * dr + di * di)
        total = u_re + v_re
        d_re = tl.where(total > 0, tl.div_rn(power_difference, tl.where(total > 0, total, 1.0)), 0.0)
    else:
        u_re = xr
        v_re = yr
        d_re = dr
    return xr, xi, yr, yi, u_re, v_re, d_re


@triton.jit
def bin_gradient(coefficients, band, valid, xr, xi, yi, di, u_re, v_re, d_re, AMPLITUDE: tl.constexpr):
    """The loss's gradient w.r.t. X at each bin (real, imaginary), from its band's COEFFICIENTS
    (`coefficients`: this slice's (K, 7) table) and X, Y, u, v, d: torch_backend._spectral_backward's
    per-bin formulas, ∂L/∂Re u, then through u = |X| (0 at X = 0, SPEC §4) or u = X."""
    at = coefficients + band * 7
    c_mean = tl.load(at + 0, mask=valid, other=0.0)
    c_uu = tl.load(at + 1, mask=valid, other=0.0)
    c_uv = tl.load(at + 2, mask=valid, other=0.0)
    c_dd = tl.load(at + 3, mask=valid, other=0.0)
    mean_u = tl.load(at + 4, mask=valid, other=0.0)
    mean_v = tl.load(at + 5, mask=valid, other=0.0)
    mean_d = tl.load(at + 6, mask=valid, other=0.0)
    grad_re = c_mean + c_uu * (u_re - mean_u) + c_uv * (v_re - mean_v) + c_dd * (d_re - mean_d)
    if AMPLITUDE:
        scale = tl.where(u_re > 0, tl.div_rn(grad_re, tl.where(u_re > 0, u_re, 1.0)), 0.0)  # as in bin_values
        return scale * xr, scale * xi
    return grad_re, c_uu * xi + c_uv * yi + c_dd * di


@triton.jit
def store_tile_stats(out, valid, band, weight, u_re, v_re, d_re, xi, yi, di, K, AMPLITUDE: tl.constexpr):
    """out[j, :] = the 8 STATS of the tile's bins of band j, for every band j they touch (Hermitian
    weights folded in), centred on the tile's own means: two passes over the registers. The
    imaginary parts' band means are 0 (Hermitian symmetry): they enter the moments as they are."""
    first = tl.min(tl.where(valid, band, K))
    last = tl.max(tl.where(valid, band, -1))
    for j in range(first, last + 1):
        w = tl.where(band == j, weight, 0.0)
        count = tl.sum(w)
        divisor = tl.maximum(count, 1.0)
        mean_u = tl.div_rn(tl.sum(w * u_re), divisor)  # correctly rounded, as in bin_values
        mean_v = tl.div_rn(tl.sum(w * v_re), divisor)
        mean_d = tl.div_rn(tl.sum(w * d_re), divisor)
        du = u_re - mean_u
        dv = v_re - mean_v
        dd = d_re - mean_d
        m2_uu = du * du
        m2_vv = dv * dv
        m2_uv = du * dv
        m2_dd = dd * dd
        if not AMPLITUDE:
            m2_uu += xi * xi
            m2_vv += yi * yi
            m2_uv += xi * yi
            m2_dd += di * di
        tl.store(out + j * 8 + 0, count)
        tl.store(out + j * 8 + 1, mean_u)
        tl.store(out + j * 8 + 2, mean_v)
        tl.store(out + j * 8 + 3, mean_d)
        tl.store(out + j * 8 + 4, tl.sum(w * m2_uu))
        tl.store(out + j * 8 + 5, tl.sum(w * m2_vv))
        tl.store(out + j * 8 + 6, tl.sum(w * m2_uv))
        tl.store(out + j * 8 + 7, tl.sum(w * m2_dd))


@triton.jit
def block_index(num_blocks):
    """(row, block), int64, of this program on the 1-D grid of `grid` (rows: batch items or slices)."""
    pid = tl.program_id(0).to(tl.int64)
    return pid // num_blocks, pid % num_blocks


@triton.jit
def _finish_kernel(
    x_ptr,  # logits (B, C, N), any float dtype
    t_ptr,  # integer label map (B, N), or dense target (read with HAS_IGNORE only)
    acc_ptr,  # the gradient of the prediction, (B, C, N) float32
    out_ptr,  # out: the gradient of the logits, (B, C, N), their dtype; may be acc_ptr
    C,  # channels
    N,  # samples per slice
    ignore_index,  # the label of ignored pixels (read with HAS_IGNORE only)
    ACTIVATION: tl.constexpr,  # ACTIVATION_CODES: none, SOFTMAX over the channels, SIGMOID
    HAS_IGNORE: tl.constexpr,  # pixels labelled ignore_index get no gradient
    BLOCK: tl.constexpr,  # pixels per program
):
    """grad of the prediction (acc, float32) → grad of the input: ignore mask, activation Jacobian.

    May run in place (out_ptr == acc_ptr): each element is read before this program writes it.
    """
    b = tl.program_id(0)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < N
    item = b.to(tl.int64) * C * N + pix  # channel k of this pixel block: + k·N, by pointer steps
    keep = mask
    if HAS_IGNORE:
        _, keep = label_map(t_ptr, b, N, pix, mask, ignore_index, HAS_IGNORE)
    if ACTIVATION == SOFTMAX:
        top = _channel_max(x_ptr + item, mask, C, N)
        total = tl.zeros((BLOCK,), tl.float32)
        dot = tl.zeros((BLOCK,), tl.float32)
        logits, grads = x_ptr + item, acc_ptr + item
        for _ in range(C):
            e = tl.exp(tl.load(logits, mask=mask, other=0.0).to(tl.float32) - top)
            total += e
            dot += e * tl.load(grads, mask=keep, other=0.0)
            logits += N
            grads += N
        dot = dot / total
        logits, grads, out = x_ptr + item, acc_ptr + item, out_ptr + item
        for _ in range(C):
            p = tl.exp(tl.load(logits, mask=mask, other=0.0).to(tl.float32) - top) / total
            g = tl.load(grads, mask=keep, other=0.0)
            tl.store(out, (p * (g - dot)).to(out_ptr.dtype.element_ty), mask=mask)
            logits += N
            grads += N
            out += N
    else:
        logits, grads, out = x_ptr + item, acc_ptr + item, out_ptr + item
        for _ in range(C):
            g = tl.load(grads, mask=keep, other=0.0)
            if ACTIVATION == SIGMOID:
                p = tl.sigmoid(tl.load(logits, mask=mask, other=0.0).to(tl.float32))
                g = g * p * (1.0 - p)
            tl.store(out, g.to(out_ptr.dtype.element_ty), mask=mask)
            logits += N
            grads += N
            out += N


# ----------------------------------------------------------------------------------------------
# host side


def grid(batch: int, num_blocks: int) -> tuple[int]:
    """One grid axis of rows·blocks programs (rows: batch items or slices): CUDA allows 2**31 − 1
    on the first axis, 65535 on the others."""
    programs = batch * num_blocks
    if programs >= 2**31:
        raise ValueError(
            f"scc_kernels triton backend: {programs} programs ({batch} rows × {num_blocks} blocks) "
            "exceed CUDA's grid limit; split the batch"
        )
    return (programs,)


def input_args(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> dict:
    """The arguments that say how every Triton kernel reads the input: ignore_index and the
    constexprs ACTIVATION, LABEL_MAP, HAS_IGNORE (the one vocabulary of triton_parseval, triton_dft
    and triton_fft)."""
    is_map = is_label_map(input, target)
    return dict(
        ignore_index=0 if problem.ignore_index is None else problem.ignore_index,  # unused unless HAS_IGNORE
        ACTIVATION=ACTIVATION_CODES[problem.activation],
        LABEL_MAP=is_map,
        HAS_IGNORE=is_map and problem.ignore_index is not None,
    )


def device_guard(device: torch.device):
    """Triton launches on the current CUDA device; make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def finish_gradient(input, target, grad, out, problem: Problem) -> None:
    """out = the gradient of the input from `grad`, the prediction's (float32, like the input), by
    `_finish_kernel`; out may be grad (in place)."""
    samples = math.prod(input.shape[2:])
    block = max(FINISH_BLOCK, triton.next_power_of_2(triton.cdiv(samples, 65535)))
    args = input_args(input, target, problem)
    _finish_kernel[(input.shape[0], triton.cdiv(samples, block))](
        input,
        target,
        grad,
        out,
        input.shape[1],
        samples,
        args["ignore_index"],
        ACTIVATION=args["ACTIVATION"],
        HAS_IGNORE=args["HAS_IGNORE"],
        BLOCK=block,
    )
