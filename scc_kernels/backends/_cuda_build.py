"""The torch extension `scc_kernels._C` built from the CUDA sources (_sources.csrc_dir).

It is the prebuilt one (`SCC_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation .`) or else
compiled on first use, not retried in the process after a failure (docs/cuda.md).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from .._options import warn_caller
from ._sources import csrc_dir

EXTENSION_SOURCES = ("launchers.cu", "torch_binding.cpp")  # setup.py's CUDAExtension too (a test checks)


_build_failure: str | None = None  # why this process's JIT build failed: it is not tried again


def build_status() -> str:
    """ "prebuilt", "jit" (compiled on first use) or "unavailable: <why>"."""
    if _build_failure is not None:
        return f"unavailable: {_build_failure}"
    return _static_build_status()


@functools.cache  # resolve("auto") asks on every call; the answer cannot change in a process
def _static_build_status() -> str:
    if importlib.util.find_spec("scc_kernels._C") is not None:
        return "prebuilt"
    reason = _jit_unavailable_reason()
    return "jit" if reason is None else f"unavailable: {reason}"


def _jit_unavailable_reason() -> str | None:
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    from torch.utils.cpp_extension import is_ninja_available

    if cuda_home() is None:
        return (
            "no prebuilt scc_kernels._C, and no CUDA toolkit to compile it (nvcc and include/cuda_runtime.h; "
            "install the CUDA toolkit or set CUDA_HOME)"
        )
    if not is_ninja_available():
        return "no prebuilt scc_kernels._C, and no ninja to compile it (pip install ninja)"
    return None


def cuda_home() -> Path | None:
    """The CUDA toolkit to compile with: the first of torch's CUDA_HOME, the folder above the
    nvcc on PATH (symlinks resolved) and the toolkit that nvcc names when it runs (a wrapper
    script in /usr/local/bin, as on the GPU image, makes torch guess /usr/local) that holds
    both bin/nvcc and include/cuda_runtime.h."""
    return next((home for home in _candidate_homes() if _is_toolkit(home)), None)


def _candidate_homes() -> Iterator[Path]:
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME:
        yield Path(cpp_extension.CUDA_HOME)
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        yield Path(nvcc).resolve().parent.parent
        yield from _toolkit_named_by(nvcc)  # runs nvcc: only asked when the above lack the headers


def _is_toolkit(home: Path) -> bool:
    return (home / "include" / "cuda_runtime.h").is_file() and shutil.which(str(home / "bin" / "nvcc")) is not None


def _toolkit_named_by(nvcc: str) -> list[Path]:
    """The TOP folder `nvcc --dryrun` prints (where the real nvcc lives, past any wrapper)."""
    command = [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(top).resolve() for top in re.findall(r"^#\$ TOP=(.+)$", result.stdout + result.stderr, re.MULTILINE)]


@functools.cache
def extension() -> ModuleType:
    """The extension module: prebuilt, or compiled once per machine (a failed build once per process)."""
    if importlib.util.find_spec("scc_kernels._C") is not None:
        try:
            return importlib.import_module("scc_kernels._C")
        except ImportError as error:  # e.g. built against another torch: compile a matching one
            warn_caller(f"scc_kernels: the prebuilt extension does not load ({error}); compiling it")
    if _build_failure is not None:
        raise RuntimeError(_build_failure)
    return _jit_build()


def _jit_build() -> ModuleType:
    global _build_failure
    from torch.utils import cpp_extension

    home = cuda_home()
    if home is not None and str(home) != cpp_extension.CUDA_HOME:  # torch's guess lacks the headers
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = str(home)
    warn_caller("scc_kernels: compiling the CUDA extension for this machine (first use only, about a minute)")
    try:
        module: ModuleType = cpp_extension.load(
            name="scc_kernels_cuda",
            sources=[str(csrc_dir() / name) for name in EXTENSION_SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],  # no --use_fast_math: SPEC §4's accuracy comes first
        )
        return module
    except Exception as error:  # a compiler's or a loader's error: remembered, reported by build_status
        lines = str(error).strip().splitlines() or [repr(error)]
        detail = "; ".join([line.strip() for line in lines if "error" in line.lower()][:3] or lines[-1:])
        _build_failure = f"the JIT build of scc_kernels._C failed (CUDA_HOME={cpp_extension.CUDA_HOME}): {detail}"
        raise RuntimeError(_build_failure) from error
