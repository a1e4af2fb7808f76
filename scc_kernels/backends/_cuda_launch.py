"""The launch glue around the csrc kernels, shared by the "cuda" and "cupy" backends.

Forward: path "parseval": `parseval_forward_kernel` (one pass, per-block PARSEVAL_SUMS); path
"fft": `activate_kernel` (base and x − t) → cuFFT rfftn → `band_stats_kernel` (per-block STATS,
merged by torch). Backward: `spectral_grad_kernel` → cuFFT irfftn → `activation_backward_kernel`
(Parseval: `activation_backward_kernel` only). A launcher has a `launch_<name>` method for each
kernel `scc::<name>_kernel`. Layouts, launch sizes and why cuFFT: docs/cuda.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from .._options import is_label_map
from .._stats import COEFFICIENTS, PARSEVAL_SUMS, STATS, gradient_coefficients, merge, parseval_stats
from ..bands import half_grid_tables
from . import torch_backend
from ._spectra import base_is_prediction, make_hermitian
from .registry import Problem

THREADS = 256  # scc::THREADS in csrc/kernels.cuh (tests/test_cuda_build.py checks they agree)
BAND_ITEMS = 4  # scc::BAND_ITEMS
MAX_BLOCKS = 4096  # blocks per launch we aim for: fills any current GPU, keeps partials small
# C++ types of the template kernels' instances: logits; label map (integer) or dense target (float)
CPP_SCALAR_TYPES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
CPP_TARGET_TYPES = {torch.uint8: "unsigned char", torch.int32: "int", torch.int64: "long long", torch.float32: "float"}
LABEL_DTYPES = (torch.uint8, torch.int32, torch.int64)  # label maps the kernels read as they are


class Launcher(Protocol):
    """The five kernel launches of `forward` and `backward` (cuda_backend's go through the torch
    extension, cupy_backend's through NVRTC): each writes its results into tensors it is given."""

    def launch_parseval_forward(
        self, logits: torch.Tensor, target: torch.Tensor, partials: torch.Tensor, problem: Problem
    ) -> None: ...

    def launch_activate(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        base_is_x: torch.Tensor,
        base: torch.Tensor,
        d: torch.Tensor,
        problem: Problem,
        blocks: int,
    ) -> None: ...

    def launch_activation_backward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        coefficients: torch.Tensor | None,
        grad_x: torch.Tensor | None,
        grad_input: torch.Tensor,
        problem: Problem,
        blocks: int,
    ) -> None: ...

    def launch_band_stats(
        self,
        S: torch.Tensor,
        D: torch.Tensor,
        base_is_x: torch.Tensor,
        band: torch.Tensor,
        weight: torch.Tensor,
        partials: torch.Tensor,
        amplitude: bool,
    ) -> None: ...

    def launch_spectral_grad(
        self,
        S: torch.Tensor,
        D: torch.Tensor,
        base_is_x: torch.Tensor,
        band: torch.Tensor,
        coefficients: torch.Tensor,
        G: torch.Tensor,
        amplitude: bool,
        blocks: int,
    ) -> None: ...


def kernel_names() -> list[str]:
    """Every kernel instance of csrc/kernels.cuh by its C++ name (CuPy's name_expressions)."""
    names = [
        f"scc::{kernel}<{scalar}, {target}>"
        for kernel in ("parseval_forward_kernel", "activate_kernel", "activation_backward_kernel")
        for scalar in CPP_SCALAR_TYPES.values()
        for target in CPP_TARGET_TYPES.values()
    ]
    return [*names, "scc::band_stats_kernel", "scc::spectral_grad_kernel"]


def forward(launcher: Launcher, input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """The backend's band_stats with the kernels of `launcher`."""
    logits, target = _flat(input, target)
    if problem.parseval:
        batch, classes, n = logits.shape
        blocks = _blocks(n, THREADS * _vec(logits), batch)
        partials = logits.new_zeros((batch, blocks, classes - problem.offset, len(PARSEVAL_SUMS)), dtype=torch.float32)
        launcher.launch_parseval_forward(logits, target, partials, problem)
        return [parseval_stats(partials.sum(1), n).unsqueeze(2)]
    return _spectral_stats(launcher, input, logits, target, problem)


def forward_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    """What `forward` returns, as empty tensors (the backends' band_stats_fake, for torch.compile)."""
    if problem.parseval:
        return torch_backend.band_stats_fake(input, target, problem)
    batch, channels, *spatial = input.shape
    channels -= problem.offset
    stats = input.new_empty((batch, channels, problem.num_bands, len(STATS)), dtype=torch.float32)
    half = input.new_empty((batch, channels, *spatial[:-1], spatial[-1] // 2 + 1, 2), dtype=torch.float32)
    return [stats, half, torch.empty_like(half), input.new_empty((batch, channels), dtype=torch.bool)]


def backward(
    launcher: Launcher,
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    saved: Sequence[torch.Tensor],
    problem: Problem,
) -> torch.Tensor:
    """The backend's band_stats_backward with the kernels of `launcher`."""
    logits, target = _flat(input, target)
    batch, _, n = logits.shape
    coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats).to(torch.float32).contiguous()
    grad_input = torch.empty_like(logits)
    blocks = _blocks(n, THREADS * _vec(logits), batch)
    if problem.parseval:
        launcher.launch_activation_backward(
            logits, target, coefficients[:, :, 0].contiguous(), None, grad_input, problem, blocks
        )
    else:
        grad_x = _spectral_grad_x(launcher, coefficients, input, saved, problem)
        launcher.launch_activation_backward(logits, target, None, grad_x, grad_input, problem, blocks)
    return grad_input.view(input.shape)


def _spectral_stats(
    launcher: Launcher, input: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, problem: Problem
) -> list[torch.Tensor]:
    """[STATS (B, C', K, 8), S, D, base_is_x]: the real views of the half spectra of each slice's
    base and of x − t, and which base (as torch_backend saves them)."""
    batch, classes, n = logits.shape
    channels = classes - problem.offset
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    base_is_x = base_is_prediction(logits, target, problem).contiguous()
    base = logits.new_empty((batch, channels, *spatial), dtype=torch.float32)
    d = torch.empty_like(base)
    launcher.launch_activate(
        logits,
        target,
        base_is_x,
        base.view(batch, channels, n),
        d.view(batch, channels, n),
        problem,
        _blocks(n, THREADS * _vec(logits), batch),
    )
    S = make_hermitian(torch.fft.rfftn(base, dim=dims, norm="ortho"), spatial[-1])
    D = make_hermitian(torch.fft.rfftn(d, dim=dims, norm="ortho"), spatial[-1])
    del base, d
    slices, bins = batch * channels, math.prod(S.shape[2:])
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    blocks = _blocks(bins, THREADS * BAND_ITEMS, slices)
    partials = logits.new_empty((slices, blocks, problem.num_bands, len(STATS)), dtype=torch.float32)
    launcher.launch_band_stats(
        S.view(slices, bins),
        D.view(slices, bins),
        base_is_x,
        tables.band32,
        tables.weight,
        partials,
        problem.spectrum == "amplitude",
    )
    stats = merge(partials, 1).view(batch, channels, problem.num_bands, len(STATS))
    return [stats, torch.view_as_real(S), torch.view_as_real(D), base_is_x]


def _spectral_grad_x(
    launcher: Launcher, coefficients: torch.Tensor, input: torch.Tensor, saved: Sequence[torch.Tensor], problem: Problem
) -> torch.Tensor:
    """Gradient of the activated prediction's output channels, (B, C', N) float32."""
    S, D = (torch.view_as_complex(spectrum.contiguous()) for spectrum in saved[:2])
    batch, channels, *half = S.shape
    slices, bins = batch * channels, math.prod(half)
    spatial, dims = tuple(input.shape[2:]), tuple(range(2, input.dim()))
    tables = half_grid_tables(spatial, problem.num_bands, input.device)
    G = torch.empty_like(S)
    launcher.launch_spectral_grad(
        S.view(slices, bins),
        D.view(slices, bins),
        saved[2].contiguous(),
        tables.band32,
        coefficients.view(slices, problem.num_bands, len(COEFFICIENTS)),
        G.view(slices, bins),
        problem.spectrum == "amplitude",
        _blocks(slices * bins, THREADS, 1),
    )
    grad_x: torch.Tensor = torch.fft.irfftn(G, s=spatial, dim=dims, norm="ortho")
    return grad_x.reshape(batch, channels, -1).contiguous()


def _flat(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, C, N) and the target as the kernels read it: labels (B, N) or float32 (B, C, N)."""
    batch, classes = input.shape[:2]
    logits = input.reshape(batch, classes, -1).contiguous()
    if is_label_map(input, target):
        labels = target.reshape(batch, -1)
        if labels.dtype not in LABEL_DTYPES:  # int8, int16, uint16...: widening keeps every value
            labels = labels.to(torch.int64)
        return logits, labels.contiguous()
    return logits, target.reshape(batch, classes, -1).to(torch.float32).contiguous()


def _vec(logits: torch.Tensor) -> int:
    """Samples per thread in the activation kernels: one 16-byte load of logits."""
    return 16 // logits.element_size()


def _blocks(work: int, per_block: int, rows: int) -> int:
    """Blocks per row (grid y): enough to cover `work` in one sweep, at most about MAX_BLOCKS in all."""
    return max(1, min(-(-work // per_block), MAX_BLOCKS // rows, 65535))
