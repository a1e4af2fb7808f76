"""The two custom ops every fast backend runs as (torch.library), with their fakes and autograd.

    scc_kernels::spectral_stats(input, target, backend, path, spectrum, num_bands, activation,
                                ignore_index, include_background) -> [stats (B, C', K, 8), *saved]
    scc_kernels::spectral_stats_backward(grad_stats, stats, input, target, saved, ...) -> grad of input

The static arguments are the backend planning.resolve chose and a registry.Problem, its path
included, so the fake, the forward and the backward run the same path. A registered op with a
fake keeps torch.compile to one graph whatever a backend does inside (Triton launches, a C++
extension, CuPy); the backward is an op too, so that AOT autograd traces it. The backward's own
autograd rule raises: no double backward through a fast backend (the reference supports every
autograd mode; planning.resolve routes the others there).
"""

from __future__ import annotations

from typing import Any

import torch

from ._options import check_labels, is_label_map
from .backends.registry import BY_NAME, Problem, load


def spectral_stats(input: torch.Tensor, target: torch.Tensor, backend: str, problem: Problem) -> list[torch.Tensor]:
    """[stats (B, C', K, 8) in _stats.STATS order, *what the backend saves], through the op."""
    stats: list[torch.Tensor] = torch.ops.scc_kernels.spectral_stats(
        input,
        target,
        backend,
        problem.path,
        problem.spectrum,
        problem.num_bands,
        problem.activation,
        problem.ignore_index,
        problem.include_background,
    )
    return stats


def _problem(
    backend: str,
    path: str,
    spectrum: str,
    num_bands: int,
    activation: str,
    ignore_index: int | None,
    include_background: bool,
) -> Problem:
    if path not in BY_NAME[backend].paths:
        raise ValueError(f"backend {backend!r} has no path {path!r} (its paths: {BY_NAME[backend].paths})")
    return Problem(spectrum, num_bands, activation, ignore_index, include_background, path)


def _label_map(input: torch.Tensor, target: torch.Tensor, ignore_index: int | None, check: bool) -> torch.Tensor:
    if not is_label_map(input, target):
        return target
    if check:
        return check_labels(target, input.shape[1], ignore_index)
    return target.long() if target.is_floating_point() else target


@torch.library.custom_op("scc_kernels::spectral_stats", mutates_args=())
def _spectral_stats(
    input: torch.Tensor,
    target: torch.Tensor,
    backend: str,
    path: str,
    spectrum: str,
    num_bands: int,
    activation: str,
    ignore_index: int | None,
    include_background: bool,
) -> list[torch.Tensor]:
    problem = _problem(backend, path, spectrum, num_bands, activation, ignore_index, include_background)
    target = _label_map(input, target, ignore_index, check=True)
    return load(backend).band_stats(input, target, problem)


@_spectral_stats.register_fake
def _(
    input: torch.Tensor,
    target: torch.Tensor,
    backend: str,
    path: str,
    spectrum: str,
    num_bands: int,
    activation: str,
    ignore_index: int | None,
    include_background: bool,
) -> list[torch.Tensor]:
    problem = _problem(backend, path, spectrum, num_bands, activation, ignore_index, include_background)
    return load(backend).band_stats_fake(input, target, problem)


@torch.library.custom_op("scc_kernels::spectral_stats_backward", mutates_args=())
def _spectral_stats_backward(
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    saved: list[torch.Tensor],
    backend: str,
    path: str,
    spectrum: str,
    num_bands: int,
    activation: str,
    ignore_index: int | None,
    include_background: bool,
) -> torch.Tensor:
    problem = _problem(backend, path, spectrum, num_bands, activation, ignore_index, include_background)
    target = _label_map(input, target, ignore_index, check=False)
    return load(backend).band_stats_backward(grad_stats.contiguous(), stats, input, target, saved, problem)


@_spectral_stats_backward.register_fake
def _(
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    saved: list[torch.Tensor],
    *static: object,
) -> torch.Tensor:
    return torch.empty_like(input)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: list[torch.Tensor]) -> None:
    input, target, *static = inputs
    ctx.static = static
    ctx.save_for_backward(input, target, *output)
    ctx.set_materialize_grads(False)  # the saved spectra get no gradient: no zero tensors for them


def _backward(ctx: Any, grads: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, ...]:
    input, target, stats, *saved = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0] and grads[0] is not None:
        grad_input = torch.ops.scc_kernels.spectral_stats_backward(grads[0], stats, input, target, saved, *ctx.static)
    return (grad_input, None, *([None] * len(ctx.static)))


_spectral_stats.register_autograd(_backward, setup_context=_setup_context)


def _setup_backward_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.backend = inputs[5]


def _no_double_backward(ctx: Any, grad: torch.Tensor) -> None:
    raise RuntimeError(
        f"scc_kernels: backend {ctx.backend!r} has no double backward (a derivative of the gradient, "
        "after create_graph=True); backend='reference' supports every autograd mode"
    )


_spectral_stats_backward.register_autograd(_no_double_backward, setup_context=_setup_backward_context)
