"""Compiling the csrc sources in the tests, without a GPU: shared by tests/test_cuda_build.py (the
compile checks) and tests/test_cuda_emulated.py (the kernels built for the CPU with
tests/cuda_host_emulator.cpp). conftest.py's session fixture `compilations` starts them all at
once; each test waits for its own with `assert_compiles`.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from scc_kernels.backends._cuda_launch import kernel_names
from scc_kernels.backends._sources import csrc_dir

CSRC = csrc_dir()
NVCC = shutil.which("nvcc")
ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
# what torch's extension build adds: the kernels must not rely on __half's C++ operators
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]


def cuda_include() -> Path | None:
    from torch.utils.cpp_extension import CUDA_HOME

    for root in (CUDA_HOME, "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return Path(root) / "include"
    return None


def start_compilations(directory: Path) -> dict[str, subprocess.Popen | str]:
    """name -> running compiler process (or the reason it cannot run here), outputs in `directory`."""
    commands = {}
    if NVCC is not None:
        for source in sorted(CSRC.glob("*.cu")):
            commands[source.name] = [
                NVCC,
                "-c",
                "-std=c++17",
                "-O3",
                *ARCHS,
                *TORCH_NVCC_FLAGS,
                str(source),
                "-o",
                str(directory / (source.stem + ".o")),
            ]
        # to PTX, as NVRTC compiles: no host compiler, no ptxas
        header = _header_check_source(directory)
        commands["header"] = [
            NVCC,
            "-ptx",
            "-std=c++17",
            "-arch=compute_80",
            str(header),
            "-o",
            str(directory / "header.ptx"),
        ]
    commands["binding"] = _binding_command(directory)
    commands["emulator"] = _emulator_command(directory)
    return {
        name: command
        if isinstance(command, str)
        else subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, command in commands.items()
    }


def assert_compiles(compilations, name):
    process = compilations[name]
    if isinstance(process, str):
        pytest.skip(process)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, f"{' '.join(process.args)}\n{output}"


def _header_check_source(directory: Path) -> Path:
    """A .cu file that includes only the device header and takes the address of every kernel
    instance CuPy names, so each template is instantiated as NVRTC would."""
    kernels = ",\n    ".join(f"(const void*)&{name}" for name in kernel_names())
    source = directory / "header_only.cu"
    source.write_text(f'#include "{CSRC / "kernels.cuh"}"\nconst void* kernels[] = {{\n    {kernels}}};\n')
    return source


def _binding_command(directory: Path) -> list[str] | str:
    """g++ -fsyntax-only of torch_binding.cpp against torch's headers, or why that cannot run here."""
    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("c++") or shutil.which("g++")
    include = cuda_include()
    if compiler is None or include is None:
        return "needs a C++ compiler and the CUDA toolkit's headers"
    if not (Path(include_paths()[0]) / "c10" / "cuda" / "CUDAGuard.h").exists():
        return "this torch wheel ships no c10/cuda headers"
    # CPU wheels ship every c10/cuda header except the one CMake generates; it only says
    # whether c10_cuda is a shared library
    stub = directory / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    # the C++ standard this torch builds extensions with
    std = "c++20" if "-std=c++20" in inspect.getsource(sys.modules["torch.utils.cpp_extension"]) else "c++17"
    includes = [*include_paths(), sysconfig.get_paths()["include"], str(include), str(directory / "stub")]
    return [
        compiler,
        "-fsyntax-only",
        f"-std={std}",
        "-Wall",
        "-Werror",
        "-DTORCH_EXTENSION_NAME=_C",
        *(f"-I{p}" for p in includes),
        str(CSRC / "torch_binding.cpp"),
    ]


def _emulator_command(directory: Path) -> list[str] | str:
    """The device header and tests/cuda_host_emulator.cpp as a host library, or why not here."""
    compiler, include = shutil.which("c++") or shutil.which("g++"), cuda_include()
    if compiler is None or include is None:
        return "needs a C++ compiler and the CUDA toolkit's headers"
    return [
        compiler,
        "-std=c++20",
        "-O1",
        "-shared",
        "-fPIC",
        "-pthread",
        "-fno-strict-aliasing",
        f"-I{CSRC}",
        f"-I{include}",
        str(Path(__file__).with_name("cuda_host_emulator.cpp")),
        "-o",
        str(directory / "host_kernels.so"),
    ]
