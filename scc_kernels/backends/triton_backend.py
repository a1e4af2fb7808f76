"""Triton backend: the fused kernels behind the backend contract (registry.BackendModule), by path.

- "parseval": the one-pass kernels of triton_parseval.py (nothing saved);
- "dft": the DFT-as-matmul kernels of triton_dft.py (saves each slice's choice of transformed
  signals; the backward recomputes the spectra);
- "fft": the kernels around torch.fft of triton_fft.py (any size and rank; saves the half spectra).

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib
import os

import torch
import triton  # noqa: F401  (a missing triton makes registry.load raise ImportError, with a hint)
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .._stats import STATS, gradient_coefficients
from .registry import Problem
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


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    if problem.parseval:
        return [parseval_band_stats(input, target, problem)]
    return _module(problem.path).band_stats(input, target, problem)


def band_stats_fake(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    if problem.parseval:
        batch, channels = input.shape[:2]
        return [input.new_empty((batch, channels - problem.offset, 1, len(STATS)), dtype=torch.float32)]
    return _module(problem.path).band_stats_fake(input, target, problem)


def band_stats_backward(grad_stats, stats, input, target, saved, problem: Problem) -> torch.Tensor:
    if problem.parseval:
        coefficients = gradient_coefficients(grad_stats.to(stats.dtype), stats)[:, :, 0]
        return parseval_backward(coefficients, input, target, problem)
    return _module(problem.path).band_stats_backward(grad_stats, stats, input, target, saved, problem)
