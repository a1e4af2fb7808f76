"""The fast backends: one module each, loaded lazily, each one room of its own.

A backend module provides (see torch_backend.py for the plainest example):

    unavailable_reason(device) -> str | None   why it cannot run on `device` (None: it can)
    band_stats(input, target, problem) -> list  [stats (B, C', K, 8), *saved]  (_stats.STATS)
    band_stats_fake(input, target, problem)     the same list as empty tensors (torch.compile)
    band_stats_backward(grad_stats, stats, input, target, saved, problem) -> grad of input, input's dtype

`input` is the raw input (the backend applies `problem.activation`); `target` is prepared by
_options.prepare (dense float or integer label map, already checked). The statistics are
centred per part and merged with _stats.merge, never formed from raw sums (SPEC §4); the
backward turns grad_stats into per-bin coefficients with _stats.gradient_coefficients.
Nothing outside this package knows how a backend computes.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import torch

FAST_BACKENDS = ("triton", "cuda", "cupy", "torch")  # all but the reference; "auto" picks by plan on CUDA
_INSTALL_HINT = {
    "triton": "pip install 'scc_kernels[triton]'",
    "cupy": "pip install cupy-cuda12x or cupy-cuda13x (the wheel matching your CUDA)",
    "cuda": "SCC_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation . (or let it JIT-compile: needs nvcc and ninja)",
}


def load(name: str):
    """The backend's module; ImportError when its dependency is missing."""
    return importlib.import_module(f"scc_kernels.backends.{name}_backend")


def unavailable_reason(name: str, device: torch.device | str | None = None) -> str | None:
    """Why backend `name` cannot run on `device` (default: cuda if present, else cpu); None if it can."""
    if name == "reference":
        return None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        module = load(name)
    except ImportError as error:
        return f"{error}; install it with: {_INSTALL_HINT.get(name, 'pip install scc_kernels')}"
    return module.unavailable_reason(torch.device(device))


@torch.compiler.assume_constant_result  # decided once when torch.compile traces, not per step
def resolve(name: str, device: torch.device, dtype: torch.dtype, problem: tuple | None = None) -> str:
    """The backend to run: `name`, or for "auto" $SCC_KERNELS_BACKEND or the fastest that can run.

    "auto": torch for CPU tensors; on CUDA, the pick of `scc_kernels.plan` for `problem` =
    (input shape, spectrum, bands, include_background). An explicitly named backend that cannot
    run raises RuntimeError saying why (SPEC §5).
    """
    if name == "auto":
        name = os.environ.get("SCC_KERNELS_BACKEND", "auto") or "auto"
    if name == "auto":
        if device.type != "cuda" or problem is None:  # no problem: an empty input, which has no plan
            return "torch"
        from ..planning import cached_plan

        shape, spectrum, bands, include_background = problem
        return cached_plan(
            shape,
            spectrum=spectrum,
            bands=bands,
            dtype=dtype,
            include_background=include_background,
            deterministic=torch.are_deterministic_algorithms_enabled(),
            autotune=os.environ.get("SCC_KERNELS_AUTOTUNE") == "1",
        ).backend
    if name not in ("reference", *FAST_BACKENDS):
        raise ValueError(f"unknown backend {name!r} (from SCC_KERNELS_BACKEND?)")
    if _supports_dtype(name, dtype):
        reason = unavailable_reason(name, device)
    else:
        reason = f"{dtype} inputs are supported by the reference and torch backends only"
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device}: {reason}")
    return name


def _supports_dtype(name: str, dtype: torch.dtype) -> bool:
    return dtype != torch.float64 or name in ("reference", "torch")


def info() -> dict[str, str | None]:
    """For every backend, None if it can run here, else why not."""
    return {name: unavailable_reason(name) for name in ("reference", *FAST_BACKENDS)}


_forced_path: str | None = None


@contextlib.contextmanager
def path_override(path: str | None):
    """Within the block, a backend with several paths for a problem (triton: "dft" or "fft") runs
    `path`: what `plan`'s autotuning times. None: the backend chooses."""
    global _forced_path
    previous, _forced_path = _forced_path, path
    try:
        yield
    finally:
        _forced_path = previous


def forced_path() -> str | None:
    return _forced_path
