"""Triton backend: the fused kernels behind the backend contract (see backends/__init__.py).

- complex spectrum, one band: the one-pass Parseval kernels of triton_kernels.py (nothing saved);
- tiny slices (torch_backend.takes_tiny_path): the torch backend's float64 path, which float32
  kernels cannot match there (torch_backend.TINY_BINS says why);
- amplitude or banded spectra, on one of two transform paths (`transform_path`): the
  DFT-as-matmul kernels of triton_dft.py ("dft": saves only each slice's choice of transformed
  signals; the backward recomputes the spectra), or the kernels around torch.fft of
  triton_fft.py ("fft": any size and rank; saves the half spectra).

Both return _stats.STATS per slice and band, and take the backward's per-bin coefficients from
_stats.gradient_coefficients.

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib
import os

import torch
import triton  # noqa: F401  (a missing triton makes backends.load raise ImportError, with a hint)
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .._options import Problem
from .._stats import STATS, gradient_coefficients
from . import dft_tiles, torch_backend
from .triton_parseval import parseval_backward, parseval_band_stats

# Triton reads TRITON_INTERPRET when a function is decorated: its own (tl.max, ...) when triton is
# first imported (torch.library does that), ours when this module is. Both must be interpreted.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and isinstance(tl.max, InterpretedFunction)


def unavailable_reason(device: torch.device) -> str | None:
    if device.type == "cuda":
        return None
    if device.type == "cpu" and INTERPRETED:
        return None
    return (
        f"the triton backend runs on CUDA tensors, or on CPU with TRITON_INTERPRET=1 set before "
        f"triton is imported, i.e. before importing scc_kernels (got a {device.type} tensor)"
    )


def _module(path: str):
    """triton_dft or triton_fft, imported on first use: the Parseval path depends on neither."""
    return importlib.import_module(f"{__package__}.triton_{path}")


def transform_path(input_shape: tuple[int, ...], problem: Problem, dtype: torch.dtype, device: torch.device) -> str:
    """ "dft" (triton_dft) or "fft" (triton_fft) for a problem that needs the transform.

    The FFT where the DFT kernels do not reach (1D, larger slices) and under
    torch.use_deterministic_algorithms(True) where the DFT backward's atomic adds land in a
    varying order (a GPU; the FFT path has no atomics). Otherwise, on a GPU, the cheaper of the
    two by scc_kernels.plan (measured, with autotuning); in Triton's interpreter, where there is
    no GPU to model, the DFT, so that the tests exercise both paths.
    """
    from ..planning import triton_path
    from . import forced_path

    if forced_path() is not None:
        return forced_path()
    dft = _module("dft")
    if not dft_tiles.supported(tuple(input_shape[2:])):
        return "fft"
    if torch.are_deterministic_algorithms_enabled() and dft._atomic_order_varies(device):
        return "fft"
    if device.type == "cuda":
        return triton_path(
            tuple(input_shape), problem.spectrum, problem.num_bands, dtype, problem.include_background, device
        )
    return "dft"


def saved_path(saved: list[torch.Tensor]) -> str:
    """Which transform path's forward saved `saved`, told apart by its structure:
    "dft" [base_is_x (B, C') bool]; "fft" [spectra (2, B, C', *half, 2) float32, base_is_x]."""
    return "dft" if len(saved) == 1 else "fft"


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    if problem.parseval:
        return [parseval_band_stats(input, target, problem)]
    if torch_backend.takes_tiny_path(input, problem):
        return torch_backend.band_stats(input, target, problem)
    path = transform_path(tuple(input.shape), problem, input.dtype, input.device)
    return _module(path).band_stats(input, target, problem)


def band_stats_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    if problem.parseval:
        batch, channels = input.shape[:2]
        return [input.new_empty((batch, channels - problem.offset, 1, len(STATS)), dtype=torch.float32)]
    if torch_backend.takes_tiny_path(input, problem):
        return torch_backend.band_stats_fake(input, target, problem)
    path = transform_path(tuple(input.shape), problem, input.dtype, input.device)
    return _module(path).band_stats_fake(input, target, problem)


def band_stats_backward(grad_stats, stats, input, target, saved, problem: Problem) -> torch.Tensor:
    if problem.parseval:
        coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats)[:, :, 0]
        return parseval_backward(coefficients, input, target, problem)
    if torch_backend.takes_tiny_path(input, problem):
        return torch_backend.band_stats_backward(grad_stats, stats, input, target, saved, problem)
    return _module(saved_path(saved)).band_stats_backward(grad_stats, stats, input, target, saved, problem)
