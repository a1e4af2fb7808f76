"""The csrc CUDA kernels compiled at run time by CuPy (NVRTC): no build step and no nvcc needed.

Forward and backward: _cuda_launch.forward / backward, with a launcher that compiles
csrc/kernels.cuh once per process and launches on torch's current stream with the tensors' device
pointers (zero-copy, bfloat16 included). Design: docs/cuda.md.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import cupy  # ImportError: backend unavailable (registry.unavailable_reason adds the install hint)
import numpy
import torch
from torch import Tensor

from .._options import ACTIVATION_CODES
from ._cuda_launch import CPP_SCALAR_TYPES, CPP_TARGET_TYPES, THREADS, backward, forward, forward_fake, kernel_names
from ._sources import csrc_dir
from .registry import Problem


def unavailable_reason(device: torch.device) -> str | None:
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        return f"CuPy cannot use the CUDA runtime: {error}"
    return None


def band_stats(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    return forward(_Launcher(input.device), input, target, problem)


band_stats_fake = forward_fake


def band_stats_backward(
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    saved: Sequence[torch.Tensor],
    problem: Problem,
) -> torch.Tensor:
    return backward(_Launcher(input.device), grad_stats, stats, input, target, saved, problem)


@functools.cache
def _module() -> cupy.RawModule:
    options = ["-std=c++17"]
    # NVRTC has no built-in cuda_fp16.h / cuda_bf16.h: the toolkit's, where there is one
    for root in (cupy.cuda.get_cuda_path(), os.environ.get("CUDA_HOME")):
        if root and os.path.exists(os.path.join(root, "include", "cuda_fp16.h")):
            options.append(f"-I{os.path.join(root, 'include')}")
            break
    source = (csrc_dir() / "kernels.cuh").read_text()
    return cupy.RawModule(code=source, options=tuple(options), name_expressions=kernel_names())


def _ptr(tensor: torch.Tensor | None) -> numpy.uint64:
    return numpy.uint64(0 if tensor is None else tensor.data_ptr())


class _Launcher:
    """The kernel launches of _cuda_launch's glue, through CuPy on torch's current stream: a
    _cuda_launch.Launcher."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)

    def _launch(self, name: str, grid: tuple[int, ...], args: tuple[object, ...]) -> None:
        with cupy.cuda.Device(self.device.index):
            _module().get_function(name)(grid, (THREADS,), args, stream=self.stream)

    def _activation(
        self,
        kernel: str,
        logits: Tensor,
        target: Tensor,
        pointers: tuple[Tensor | None, ...],
        problem: Problem,
        blocks: int,
        root_n: bool,
    ) -> None:
        batch, classes, n = logits.shape
        name = f"scc::{kernel}<{CPP_SCALAR_TYPES[logits.dtype]}, {CPP_TARGET_TYPES[target.dtype]}>"
        ignore = problem.ignore_index
        args: tuple[object, ...] = (
            _ptr(logits),
            _ptr(target),
            *(_ptr(p) for p in pointers),
            numpy.int32(classes),
            numpy.int64(n),
            numpy.int32(problem.offset),
            numpy.int32(ACTIVATION_CODES[problem.activation]),
            numpy.int32(ignore is not None),
            numpy.int64(0 if ignore is None else ignore),
        )
        if root_n:
            args += (numpy.float32(n**0.5),)
        self._launch(name, (batch, blocks), args)

    def launch_parseval_forward(self, logits: Tensor, target: Tensor, partials: Tensor, problem: Problem) -> None:
        self._activation("parseval_forward_kernel", logits, target, (partials,), problem, partials.shape[1], False)

    def launch_activate(
        self, logits: Tensor, target: Tensor, base_is_x: Tensor, base: Tensor, d: Tensor, problem: Problem, blocks: int
    ) -> None:
        self._activation("activate_kernel", logits, target, (base_is_x, base, d), problem, blocks, False)

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
        pointers = (coefficients, grad_x, grad_input)
        self._activation("activation_backward_kernel", logits, target, pointers, problem, blocks, True)

    def launch_band_stats(
        self, S: Tensor, D: Tensor, base_is_x: Tensor, band: Tensor, weight: Tensor, partials: Tensor, amplitude: bool
    ) -> None:
        slices, bins = S.shape
        args = (
            *map(_ptr, (S, D, base_is_x, band, weight, partials)),
            numpy.int64(bins),
            numpy.int32(partials.shape[2]),
            numpy.int32(amplitude),
        )
        self._launch("scc::band_stats_kernel", (slices, partials.shape[1]), args)

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
        slices, bins = S.shape
        args = (
            *map(_ptr, (S, D, base_is_x, band, coefficients, G)),
            numpy.int64(slices),
            numpy.int64(bins),
            numpy.int32(coefficients.shape[1]),
            numpy.int32(amplitude),
        )
        self._launch("scc::spectral_grad_kernel", (blocks,), args)
