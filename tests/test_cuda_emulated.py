"""The CUDA C++ kernels on the CPU, without a GPU or CuPy.

The device header built by the host compiler with tests/cuda_host_emulator.cpp (a std::thread per
CUDA thread), driven through ctypes behind the real op and glue: every case of cuda_cases.py
against the float64 reference with SPEC §4's tolerance (near-converged predictions and bands of
a few bins included), and the op's outputs against its fake. The CuPy backend with a stand-in
for CuPy: its launches' arguments match the kernels' C++ signatures.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from cuda_cases import KernelCases
from cuda_utils import CSRC, assert_compiles
from utils import random_problem, typed_problem

from scc_kernels._options import ACTIVATION_CODES
from scc_kernels.backends import _cuda_build, _cuda_launch, cuda_backend, registry
from scc_kernels.backends.registry import Problem

SCALAR_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # scc::Scalar
TARGET_CODES = {torch.uint8: 0, torch.int32: 1, torch.int64: 2, torch.float32: 3}  # scc::Target


@pytest.fixture(scope="module")
def host_kernels(compilations):
    assert_compiles(compilations, "emulator")
    return _HostLauncher(ctypes.CDLL(compilations["emulator"].args[-1]))


def _pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if tensor is None else tensor.data_ptr())


class _HostLauncher:
    """_cuda_launch's launcher protocol on the emulator's launchers, with the arguments that
    torch_binding.cpp derives (its checks left out: the glue's shapes are tested on their own)."""

    def __init__(self, library):
        self.lib = library

    def _activation(self, function, logits, target, pointers, problem, blocks, root_n):
        batch, classes, n = logits.shape
        ignore = problem.ignore_index
        args = [
            ctypes.c_int(SCALAR_CODES[logits.dtype]),
            ctypes.c_int(TARGET_CODES[target.dtype]),
            _pointer(logits),
            _pointer(target),
            *map(_pointer, pointers),
            ctypes.c_int(batch),
            ctypes.c_int(blocks),
            ctypes.c_int(classes),
            ctypes.c_longlong(n),
            ctypes.c_int(problem.offset),
            ctypes.c_int(ACTIVATION_CODES[problem.activation]),
            ctypes.c_int(ignore is not None),
            ctypes.c_longlong(0 if ignore is None else ignore),
        ]
        if root_n:
            args.append(ctypes.c_float(math.sqrt(n)))
        function(*args)

    def launch_parseval_forward(self, logits, target, partials, problem):
        self._activation(
            self.lib.launch_parseval_forward, logits, target, [partials], problem, partials.shape[1], False
        )

    def launch_activate(self, logits, target, base_is_x, base, d, problem, blocks):
        self._activation(self.lib.launch_activate, logits, target, [base_is_x, base, d], problem, blocks, False)

    def launch_activation_backward(self, logits, target, coefficients, grad_x, grad_input, problem, blocks):
        pointers = [coefficients, grad_x, grad_input]
        self._activation(self.lib.launch_activation_backward, logits, target, pointers, problem, blocks, True)

    def launch_band_stats(self, S, D, base_is_x, band, weight, partials, amplitude):
        slices, bins = S.shape
        self.lib.launch_band_stats(
            *map(_pointer, (S, D, base_is_x, band, weight, partials)),
            ctypes.c_longlong(slices),
            ctypes.c_int(partials.shape[1]),
            ctypes.c_longlong(bins),
            ctypes.c_int(partials.shape[2]),
            ctypes.c_int(amplitude),
        )

    def launch_spectral_grad(self, S, D, base_is_x, band, coefficients, G, amplitude, blocks):
        slices, bins = S.shape
        self.lib.launch_spectral_grad(
            *map(_pointer, (S, D, base_is_x, band, coefficients, G)),
            ctypes.c_int(blocks),
            ctypes.c_longlong(slices),
            ctypes.c_longlong(bins),
            ctypes.c_int(coefficients.shape[1]),
            ctypes.c_int(amplitude),
        )


@pytest.mark.slow  # builds the emulator (with every csrc compile of the session fixture) and runs it
class TestEmulated(KernelCases):
    @pytest.fixture
    def backend(self, host_kernels, monkeypatch):
        """The "cuda" backend on CPU tensors, its extension's launches replaced by the emulator's."""
        on_cpu_too = dataclasses.replace(registry.BY_NAME["cuda"], devices=("cuda", "cpu"))
        monkeypatch.setitem(registry.BY_NAME, "cuda", on_cpu_too)  # the record: CPU tensors too
        monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda device: None)
        monkeypatch.setattr(_cuda_build, "extension", lambda: None)
        monkeypatch.setattr(cuda_backend, "_Launcher", lambda extension: host_kernels)
        return "cuda", "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("spectrum, bands", [("complex", None), ("amplitude", 3), ("complex", 2)])
def test_saved_tensors_match_the_fake(host_kernels, spectrum, bands):
    """What the op returns is what its fake implementation promises torch.compile."""
    path = "parseval" if (spectrum, bands) == ("complex", None) else "fft"
    problem = Problem(spectrum, bands or 1, "softmax", None, False, path)
    logits, target = typed_problem((9, 10), {}, "int64", torch.float32, "cpu")
    got = _cuda_launch.forward(host_kernels, logits, target, problem)
    fake = cuda_backend.band_stats_fake(logits, target, problem)
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in fake]


# ----------------------------------------------------------------------------------------------
# the CuPy launcher without CuPy: every launch against the kernel's C++ signature


def _kernel_signatures() -> dict[str, list[str]]:
    """Kernel name (without template arguments) -> its parameters' C++ types, from the header."""
    source = (CSRC / "kernels.cuh").read_text()
    signatures = {}
    for name, params in re.findall(r"__launch_bounds__\(THREADS\)\s+(\w+)\(([^)]*)\)", source):
        signatures[name] = [re.sub(r"\s*(__restrict__\s*)?\w+$", "", p.strip()) for p in params.split(",")]
    return signatures


def _numpy_type(cpp_type: str):
    import numpy

    if "*" in cpp_type:
        return numpy.uint64  # a device pointer
    return {"int": numpy.int32, "long long": numpy.int64, "float": numpy.float32}[cpp_type]


class _FakeCuPy:
    """Just enough of CuPy's API for cupy_backend to run its launches on CPU tensors, recorded."""

    def __init__(self):
        self.launches, self.modules = [], []
        fake = self

        class RawModule:
            def __init__(self, code, options, name_expressions):
                fake.modules.append((code, options, list(name_expressions)))

            def get_function(self, name):
                return lambda grid, block, args, stream: fake.launches.append((name, grid, block, args))

        class Device:
            def __init__(self, index):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        cuda = types.SimpleNamespace(ExternalStream=lambda pointer: pointer, Device=Device, get_cuda_path=lambda: None)
        self.module = types.SimpleNamespace(RawModule=RawModule, cuda=cuda)


@pytest.mark.parametrize("spectrum, num_bands", [("complex", 1), ("amplitude", 3), ("complex", 2)])
def test_cupy_launches_match_the_kernel_signatures(spectrum, num_bands, monkeypatch):
    fake = _FakeCuPy()
    monkeypatch.setitem(sys.modules, "cupy", fake.module)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: type("S", (), {"cuda_stream": 0})())
    # loaded under another name, so that the real cupy_backend is never replaced by this one
    spec = importlib.util.spec_from_file_location(
        "scc_kernels.backends._cupy_backend_under_test", Path(cuda_backend.__file__).with_name("cupy_backend.py")
    )
    cupy_backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cupy_backend)

    path = "parseval" if (spectrum, num_bands) == ("complex", 1) else "fft"
    problem = Problem(spectrum, num_bands, "softmax", 255, False, path)
    logits, target = random_problem(2, 3, (9, 10), ignore_index=255)
    target = target.to(torch.uint8)
    stats, *saved = cupy_backend.band_stats(logits, target, problem)
    cupy_backend.band_stats_backward(torch.ones_like(stats), stats, logits, target, saved, problem)

    ((code, options, names),) = fake.modules  # compiled once
    assert code == (CSRC / "kernels.cuh").read_text() and "-std=c++17" in options
    assert names == _cuda_launch.kernel_names()
    signatures = _kernel_signatures()
    launched = [name.split("<")[0].removeprefix("scc::") for name, *_ in fake.launches]
    expected = (
        ["parseval_forward_kernel", "activation_backward_kernel"]
        if problem.parseval
        else ["activate_kernel", "band_stats_kernel", "spectral_grad_kernel", "activation_backward_kernel"]
    )
    assert launched == expected
    for name, grid, block, args in fake.launches:
        assert name in names and block == (_cuda_launch.THREADS,)
        assert all(isinstance(g, int) and g >= 1 for g in grid)
        kernel = name.split("<")[0].removeprefix("scc::")
        assert [type(a) for a in args] == [_numpy_type(t) for t in signatures[kernel]], name
        assert "<" not in name or name.endswith("<float, unsigned char>")  # the tensors' dtypes
