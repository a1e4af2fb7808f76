"""The csrc CUDA kernels compiled at run time by CuPy (NVRTC): no build step and no nvcc needed.

The same device code as the torch extension (csrc/scc_kernels.cuh) and the same glue
(cuda_backend.forward / backward, cuFFT through torch.fft); only compiling and launching
differ. The module is compiled once per process (CuPy caches the binary on disk), with the
template kernels named by `name_expressions`. Kernels run on torch's current stream, and take
the torch tensors' device pointers directly: zero-copy, and it covers bfloat16, which CuPy has
no dtype for (so `cupy.asarray` could not wrap those tensors).
"""

from __future__ import annotations

import functools
import os

import cupy  # ImportError: backend unavailable (backends.unavailable_reason adds the install hint)
import numpy
import torch

from .._options import Problem
from . import cuda_backend, torch_backend
from .cuda_backend import ACTIVATION_CODES, CPP_SCALAR_TYPES, CPP_TARGET_TYPES, CSRC, THREADS, kernel_names


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"needs a CUDA device, got {device.type}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        return f"CuPy cannot use the CUDA runtime: {error}"
    return None


def band_sums(input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
    return cuda_backend.forward(_Launcher(input.device), input, target, problem)


band_sums_fake = torch_backend.band_sums_fake


def band_sums_backward(grad_sums, input, target, saved, problem: Problem) -> torch.Tensor:
    return cuda_backend.backward(_Launcher(input.device), grad_sums, input, target, saved, problem)


@functools.cache
def _module() -> cupy.RawModule:
    options = ["-std=c++17"]
    # NVRTC has no built-in cuda_fp16.h / cuda_bf16.h: the toolkit's, where there is one
    for root in (cupy.cuda.get_cuda_path(), os.environ.get("CUDA_HOME")):
        if root and os.path.exists(os.path.join(root, "include", "cuda_fp16.h")):
            options.append(f"-I{os.path.join(root, 'include')}")
            break
    source = (CSRC / "scc_kernels.cuh").read_text()
    return cupy.RawModule(code=source, options=tuple(options), name_expressions=kernel_names())


def _ptr(tensor: torch.Tensor | None) -> numpy.uint64:
    return numpy.uint64(0 if tensor is None else tensor.data_ptr())


class _Launcher:
    """The kernel launches of cuda_backend's glue, through CuPy on torch's current stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)

    def _launch(self, name: str, grid: tuple[int, ...], args: tuple):
        with cupy.cuda.Device(self.device.index):
            _module().get_function(name)(grid, (THREADS,), args, stream=self.stream)

    def _activation(self, kernel, logits, target, pointers, problem: Problem, blocks: int, root_n: bool):
        batch, classes, n = logits.shape
        name = f"scc::{kernel}<{CPP_SCALAR_TYPES[logits.dtype]}, {CPP_TARGET_TYPES[target.dtype]}>"
        ignore = problem.ignore_index
        args = (
            _ptr(logits), _ptr(target), *(_ptr(p) for p in pointers), numpy.int32(classes), numpy.int64(n),
            numpy.int32(problem.offset), numpy.int32(ACTIVATION_CODES[problem.activation]),
            numpy.int32(ignore is not None), numpy.int64(0 if ignore is None else ignore),
        )  # fmt: skip
        if root_n:
            args += (numpy.float32(n**0.5),)
        self._launch(name, (batch, blocks), args)

    def parseval_forward(self, logits, target, partials, problem: Problem):
        self._activation("parseval_forward", logits, target, (partials,), problem, partials.shape[1], True)

    def activate(self, logits, target, x, y, problem: Problem, blocks: int):
        self._activation("activate", logits, target, (x, y), problem, blocks, False)

    def activation_backward(self, logits, target, grad_sums, grad_x, grad_input, problem: Problem, blocks: int):
        pointers = (grad_sums, grad_x, grad_input)
        self._activation("activation_backward", logits, target, pointers, problem, blocks, True)

    def band_stats(self, X, Y, band, weight, partials, abs_y):
        slices, bins = X.shape
        args = (_ptr(X), _ptr(Y), _ptr(band), _ptr(weight), _ptr(partials), _ptr(abs_y), numpy.int64(bins),
                numpy.int32(partials.shape[2]), numpy.int32(abs_y is not None))  # fmt: skip
        self._launch("scc::band_stats", (slices, partials.shape[1]), args)

    def spectral_grad(self, X, abs_y, Y, band, grad_sums, G, blocks: int):
        slices, bins = X.shape
        args = (_ptr(X), _ptr(abs_y), _ptr(Y), _ptr(band), _ptr(grad_sums), _ptr(G), numpy.int64(slices),
                numpy.int64(bins), numpy.int32(grad_sums.shape[1]))  # fmt: skip
        self._launch("scc::spectral_grad", (blocks,), args)
