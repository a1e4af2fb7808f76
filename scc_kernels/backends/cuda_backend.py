"""The "cuda" backend: the csrc kernels through the torch extension `scc_kernels._C`.

The backend contract (availability, band_stats and its fake and backward), the extension's
`build_status` and the launcher that calls the extension. Forward and backward: _cuda_launch.py;
the sources and the build: _cuda_build.py; design: docs/cuda.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from .._options import ACTIVATION_CODES
from . import _cuda_build
from ._cuda_build import build_status
from ._cuda_launch import backward, forward, forward_fake
from .registry import Problem


def unavailable_reason(device: torch.device) -> str | None:
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    status = build_status()
    return status.removeprefix("unavailable: ") if status.startswith("unavailable") else None


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    return forward(_Launcher(_cuda_build.extension()), input, target, problem)


band_stats_fake = forward_fake


def band_stats_backward(
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    saved: Sequence[torch.Tensor],
    problem: Problem,
) -> torch.Tensor:
    return backward(_Launcher(_cuda_build.extension()), grad_stats, stats, input, target, saved, problem)


class _Launcher:
    """Kernel launches through the extension (tensors in; it checks them and picks the stream):
    a _cuda_launch.Launcher."""

    def __init__(self, extension: ModuleType):
        self.ext = extension

    def launch_parseval_forward(self, logits: Tensor, target: Tensor, partials: Tensor, problem: Problem) -> None:
        self.ext.launch_parseval_forward(logits, target, partials, *_codes(problem))

    def launch_activate(
        self, logits: Tensor, target: Tensor, base_is_x: Tensor, base: Tensor, d: Tensor, problem: Problem, blocks: int
    ) -> None:
        self.ext.launch_activate(logits, target, base_is_x, base, d, *_codes(problem), blocks)

    def launch_activation_backward(
        self,
        logits: Tensor,
        target: Tensor,
        coefficients: Tensor | None,
        grad_x: Tensor | None,
        grad_input: Tensor,
        problem: Problem,
        blocks: int,
    ) -> None:
        self.ext.launch_activation_backward(logits, target, coefficients, grad_x, grad_input, *_codes(problem), blocks)

    def launch_band_stats(
        self, S: Tensor, D: Tensor, base_is_x: Tensor, band: Tensor, weight: Tensor, partials: Tensor, amplitude: bool
    ) -> None:
        self.ext.launch_band_stats(S, D, base_is_x, band, weight, partials, amplitude)

    def launch_spectral_grad(
        self,
        S: Tensor,
        D: Tensor,
        base_is_x: Tensor,
        band: Tensor,
        coefficients: Tensor,
        G: Tensor,
        amplitude: bool,
        blocks: int,
    ) -> None:
        self.ext.launch_spectral_grad(S, D, base_is_x, band, coefficients, G, amplitude, blocks)


def _codes(problem: Problem) -> tuple[int, int, int | None]:
    """(offset, activation code, ignore_index) as the kernels take them."""
    return problem.offset, ACTIVATION_CODES[problem.activation], problem.ignore_index
