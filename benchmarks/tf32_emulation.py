"""CPU emulation of the Triton backend's DFT-as-matmul precision (triton_dft.py) against SPEC §4.

The Triton kernels run every DFT stage as a `tl.dot`. Here torch_backend's spectral path runs
with its `torch.fft.rfftn` / `irfftn` replaced by the same stages as CPU matmuls whose operands
are converted as the tensor cores convert them, in one of these modes:
    tf32      operands truncated to 10 mantissa bits (a plain "tf32" dot: bfloat16/float16 inputs)
    tf32x3    big = operand rounded to tf32, small = the rest (truncated): big·big + small·big
              + big·small (float32 inputs)
    tf32-rna  operands rounded to nearest tf32 (what "tf32" would give with explicit cvt.rna)
    ieee      float32 operands (the Triton interpreter; a baseline)
tf32 products are exact in float32, so a float32 matmul of the converted operands accumulates
in float32 as the tensor cores do (in another order); every stage's result is float32, as in
the kernels' registers. 2D: the W stage (real × complex) then the H stage (complex); 3D adds
the D stage, which the kernels run elementwise in float32 (always "ieee" here).

Everything else is torch_backend's own code in float64, whatever the seam is: which signals
it transforms (the prediction x and the difference x − y, so that d = u − v keeps its digits
near convergence), the band statistics (`_stats.STATS`), `loss_from_stats`, the coefficients of
`gradient_coefficients` and the per-bin gradient of the half spectrum, then the emulated
inverse. So the table isolates the error of the dots; the kernels' own float32 reductions and
softmax are not emulated (`python -m scc_kernels verify` measures the whole pipeline on a GPU).
These are CPU emulations, not GPU measurements.

Inputs: softmax probabilities x rounded to float32 and one-hot labels, "random" (softmax of
2·randn, random labels) and near-converged (`verify.converged_problem`, confidence 4 and 8).
Reference: `scc_loss(backend="reference")` in float64 on the same x. Errors, worst over the
seeds, per loss value (reduction "none") and for the gradient of the mean loss: as fractions of
SPEC §4's tolerance for the input dtype the mode serves (≤ 1 passes; "f32": 1e-4·|L64| +
1e-6 and 1e-3·‖g64‖ + 1e-7, "f16": 1e-2 for both) and as relative errors |L − L64|/|L64|,
‖g − g64‖/‖g64‖. SPEC's g is the gradient w.r.t. the logits: both gradients w.r.t. x go through
the softmax Jacobian at x (float64). The "p grad" columns compare the gradients w.r.t. x
itself: near convergence their relative errors are larger, as the Jacobian damps the confident
pixels, which carry as much of the transforms' error as any other.

    python benchmarks/tf32_emulation.py [--sizes 256 512] [--seeds 2] [--modes tf32 tf32x3]
"""

import argparse
import contextlib
import math
import time
from unittest import mock

import torch

from scc_kernels import scc_loss
from scc_kernels._options import make_options
from scc_kernels._stats import loss_from_stats
from scc_kernels.backends import torch_backend
from scc_kernels.backends.registry import Problem
from scc_kernels.bands import hermitian_weights
from scc_kernels.verify import GRAD_ATOL, GRAD_RTOL, LOSS_ATOL, LOSS_RTOL, make_problem

INPUTS = ("random", "converged 4", "converged 8")  # verify.make_problem regimes
SPECTRA = (("amplitude", None), ("amplitude", 4), ("complex", 3))
TOLERANCE_DTYPE = {"tf32": torch.float16, "tf32-rna": torch.float16, "tf32x3": torch.float32, "ieee": torch.float32}


def tf32(t, nearest=False):
    """float32 → tf32 (10 mantissa bits): truncated, as the tensor cores read a float32 operand
    (Triton's "tf32" converts nothing: triton-lang/triton#4574), or rounded to nearest, ties
    away (cvt.rna.tf32.f32, as Triton rounds the big part in "tf32x3")."""
    bits = t.float().view(torch.int32)
    if nearest:
        bits = bits + 0x1000  # sign-magnitude: rounds the magnitude
    return (bits & ~0x1FFF).view(torch.float32)


def mm(a, b, mode):
    """a @ b as one tensor-core dot in `mode`: tf32 products are exact in float32, so a float32
    matmul of the converted operands accumulates as the tensor cores do (in another order)."""
    a, b = a.float(), b.float()
    if mode == "ieee":
        return a @ b
    if mode in ("tf32", "tf32-rna"):
        return tf32(a, mode == "tf32-rna") @ tf32(b, mode == "tf32-rna")
    a_big, b_big = tf32(a, True), tf32(b, True)  # tf32x3: the small parts a − big are exact
    return a_big @ b_big + (tf32(a - a_big) @ b_big + a_big @ tf32(b - b_big))


def twiddles(n, rows):
    """cos and sin of 2π·k·m/n (k < rows, m < n), orthonormal scaling, as float32 tables."""
    k = torch.arange(rows).view(-1, 1)
    m = torch.arange(n).view(1, -1)
    angle = 2 * math.pi * ((k * m) % n).double() / n
    return (torch.cos(angle) / math.sqrt(n)).float(), (torch.sin(angle) / math.sqrt(n)).float()


def _along(F, z, axis, mode):  # F (n', n) applied to axis `axis` of z
    z = z.movedim(axis, -1)
    out = mm(z.reshape(-1, z.shape[-1]), F.T, mode)
    return out.view(*z.shape[:-1], F.shape[0]).movedim(-1, axis)


def fwd(x, modes):
    """rfftn of x (..., *S) as dots: the last axis first (real × complex), then the others
    (complex); `modes` holds the dot precision of each spatial axis's stage."""
    n = x.shape[-1]
    cw, sw = twiddles(n, n // 2 + 1)
    zr, zi = _along(cw, x, -1, modes[-1]), -_along(sw, x, -1, modes[-1])
    for axis in range(-2, -len(modes) - 1, -1):  # (cos − i·sin)·z
        c, s = twiddles(x.shape[axis], x.shape[axis])
        zr, zi = (
            _along(c, zr, axis, modes[axis]) + _along(s, zi, axis, modes[axis]),
            _along(c, zi, axis, modes[axis]) - _along(s, zr, axis, modes[axis]),
        )
    return torch.complex(zr, zi)


def inv(G, spatial, modes):
    """irfftn of the half spectrum G (..., *half) as dots: the last axis carries the Hermitian
    weights, so this maps the gradient of the half spectrum to that of x (..., *S)."""
    gr, gi = G.real.float(), G.imag.float()
    for axis in range(-len(modes), -1):  # (cos + i·sin)·g
        c, s = twiddles(spatial[axis], spatial[axis])
        gr, gi = (
            _along(c, gr, axis, modes[axis]) - _along(s, gi, axis, modes[axis]),
            _along(c, gi, axis, modes[axis]) + _along(s, gr, axis, modes[axis]),
        )
    n = spatial[-1]
    cw, sw = twiddles(n, n // 2 + 1)
    h = hermitian_weights(spatial)[(0,) * (len(spatial) - 1)].float().view(-1, 1)
    return _along((h * cw).T, gr, -1, modes[-1]) - _along((h * sw).T, gi, -1, modes[-1])


@contextlib.contextmanager
def emulated_fft(modes):
    """torch.fft.rfftn and irfftn (orthonormal, over the trailing len(modes) axes) run as the
    emulated dots while inside; results in float64, so what torch_backend does with them is exact.
    Yields the names of the transforms called (to check that something was emulated)."""
    called = []

    def rfftn(z, dim, norm):
        assert norm == "ortho" and tuple(dim) == tuple(range(z.dim() - len(modes), z.dim()))
        called.append("rfftn")
        return fwd(z, modes).to(torch.complex128)

    def irfftn(G, s, dim, norm):
        assert norm == "ortho" and tuple(dim) == tuple(range(G.dim() - len(modes), G.dim()))
        called.append("irfftn")
        return inv(G, tuple(s), modes).double()

    with mock.patch("torch.fft.rfftn", rfftn), mock.patch("torch.fft.irfftn", irfftn):
        yield called


def emulated(x, labels, spectrum, bands, modes):
    """torch_backend's spectral path on probabilities x (1, C, *S) float64 and a label map, with
    its transforms emulated: loss values (1, C) and the gradient of their mean w.r.t. x."""
    opts = make_options(spectrum=spectrum, bands=bands)
    path = "parseval" if (spectrum, opts.num_bands) == ("complex", 1) else "fft"
    problem = Problem(spectrum, opts.num_bands, "none", None, True, path)
    with emulated_fft(modes) as called:
        stats, *saved = torch_backend.band_stats(x, labels, problem)
        stats.requires_grad_(True)
        loss = loss_from_stats(stats, opts)
        (grad_stats,) = torch.autograd.grad(loss.mean(), stats)
        grad = torch_backend.band_stats_backward(grad_stats, stats.detach(), x, labels, saved, problem)
    if {"rfftn", "irfftn"} - set(called):
        raise RuntimeError(f"torch_backend called only {called} of torch.fft.rfftn/irfftn: not all emulated")
    return loss.detach(), grad


def reference(x, labels, spectrum, bands):
    x = x.clone().requires_grad_(True)
    loss = scc_loss(x, labels, spectrum=spectrum, bands=bands, backend="reference", reduction="none")
    return loss.detach(), torch.autograd.grad(loss.mean(), x)[0]


def softmax_backward(grad_x, x):  # the gradient w.r.t. the logits, x = softmax(logits)
    return x * (grad_x - (x * grad_x).sum(1, keepdim=True))


def spec_errors(L, g, L64, g64, mode):
    """[loss/tol, grad/tol, loss rel, grad rel]: SPEC §4 for the input dtype `mode` serves."""
    dtype = TOLERANCE_DTYPE[mode]
    loss_error, grad_error = (L - L64).abs(), (g - g64).norm()
    return [
        (loss_error / (LOSS_RTOL[dtype] * L64.abs() + LOSS_ATOL)).max().item(),
        (grad_error / (GRAD_RTOL[dtype] * g64.norm() + GRAD_ATOL)).item(),
        (loss_error / L64.abs()).max().item(),
        (grad_error / g64.norm()).item(),
    ]


def same_on_every_axis(mode, dims):
    return (mode,) * dims


def table(spatial, channels, seeds, modes, axis_modes):
    """Print one row per (input, spectrum, mode), worst over the seeds; `axis_modes(mode, dims)`
    gives the dot precision of each axis's stage."""
    size = "x".join(map(str, spatial))
    print(f"{size}, C = {channels}, worst of {seeds} seed(s)")
    print(
        f"{'input':<12} {'spectrum':<14} {'mode':<8} {'tol':<4} {'loss/tol':>9} {'grad/tol':>9} "
        f"{'loss rel':>9} {'grad rel':>9} {'p grad/tol':>10} {'p grad rel':>10} {'min L64':>9}"
    )
    for regime in INPUTS:
        worst, smallest = {}, {}
        for seed in range(seeds):
            generator = torch.Generator().manual_seed(seed)
            logits, labels = make_problem(
                regime, 1, channels, spatial, {}, dtype=torch.float64, device="cpu", generator=generator
            )
            x = torch.softmax(logits, 1).float().double()
            for spectrum, bands in SPECTRA:
                L64, g64 = reference(x, labels, spectrum, bands)
                smallest[spectrum, bands] = min(smallest.get((spectrum, bands), 2.0), L64.min().item())
                for mode in modes:
                    L, g = emulated(x, labels, spectrum, bands, axis_modes(mode, len(spatial)))
                    errors = spec_errors(L, softmax_backward(g, x), L64, softmax_backward(g64, x), mode)
                    errors += spec_errors(L, g, L64, g64, mode)[1::2]  # the gradients w.r.t. x
                    key = (spectrum, bands, mode)
                    worst[key] = [max(a, b) for a, b in zip(worst.get(key, errors), errors)]
        for (spectrum, bands, mode), e in worst.items():
            name = spectrum + ("" if bands is None else f" K={bands}")
            tol = "f32" if TOLERANCE_DTYPE[mode] == torch.float32 else "f16"
            print(
                f"{regime:<12} {name:<14} {mode:<8} {tol:<4} "
                + " ".join(f"{v:9.2e}" for v in e[:4])
                + "".join(f" {v:10.2e}" for v in e[4:])
                + f" {smallest[spectrum, bands]:9.2e}",
                flush=True,
            )


def main(dims, default_sizes, channels, axis_modes=same_on_every_axis):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=default_sizes)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["tf32", "tf32x3"], choices=list(TOLERANCE_DTYPE))
    args = parser.parse_args()
    for n in args.sizes:
        start = time.perf_counter()
        table((n,) * dims, channels, args.seeds, args.modes, axis_modes)
        print(f"({time.perf_counter() - start:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main(2, [256, 512], channels=4)
