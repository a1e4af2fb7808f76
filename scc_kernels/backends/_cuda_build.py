"""Where the CUDA sources are, and the torch extension `scc_kernels._C` built from them.

The sources are one directory, csrc/ at the top of the repository; setuptools installs it as the
package's scc_kernels/csrc (pyproject's package-dir). `csrc_dir` is the one place that knows
both, for everything that compiles them: the JIT build here, CuPy's NVRTC and the tests
(setup.py's prebuilt extension names them from the repository root, where it runs).

The extension is the one built by `SCC_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation .`
when present, else it is compiled on first use with torch.utils.cpp_extension.load (nvcc +
ninja, about a minute, cached in torch's extensions folder). Kept apart from cuda_backend so
that the backend reads as what it runs, and CuPy finds the sources without the torch build.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import shutil
from pathlib import Path

import torch

from .._options import warn_caller

EXTENSION_SOURCES = ("launchers.cu", "torch_binding.cpp")  # setup.py's CUDAExtension too (a test checks)


def csrc_dir() -> Path:
    """The CUDA sources: the installed package's copy (a wheel), else the repository's csrc/ (a
    checkout, or the editable install, which maps scc_kernels.csrc there without copying it)."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "csrc"
    return installed if installed.is_dir() else package.parent / "csrc"


@functools.cache  # resolve("auto") asks on every call; the answer cannot change in a process
def build_status() -> str:
    """ "prebuilt", "jit" (compiled on first use) or "unavailable: <why>"."""
    if importlib.util.find_spec("scc_kernels._C") is not None:
        return "prebuilt"
    reason = _jit_unavailable_reason()
    return "jit" if reason is None else f"unavailable: {reason}"


def _jit_unavailable_reason() -> str | None:
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available

    if CUDA_HOME is None or shutil.which(str(Path(CUDA_HOME) / "bin" / "nvcc")) is None:
        return "no prebuilt scc_kernels._C, and no nvcc to compile it (install the CUDA toolkit or set CUDA_HOME)"
    if not is_ninja_available():
        return "no prebuilt scc_kernels._C, and no ninja to compile it (pip install ninja)"
    return None


@functools.cache
def extension():
    """The extension module: prebuilt, or compiled once per machine."""
    if importlib.util.find_spec("scc_kernels._C") is not None:
        try:
            return importlib.import_module("scc_kernels._C")
        except ImportError as error:  # e.g. built against another torch: compile a matching one
            warn_caller(f"scc_kernels: the prebuilt extension does not load ({error}); compiling it")
    from torch.utils.cpp_extension import load

    warn_caller("scc_kernels: compiling the CUDA extension for this machine (first use only, about a minute)")
    return load(
        name="scc_kernels_cuda",
        sources=[str(csrc_dir() / name) for name in EXTENSION_SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],  # no --use_fast_math: SPEC §4's accuracy comes first
    )
