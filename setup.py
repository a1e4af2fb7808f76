"""Pure-Python install by default; SCC_KERNELS_BUILD_CUDA=1 also builds the CUDA extension.

A plain `pip install .` never imports torch in the build environment. The extension build
needs the installed torch: `SCC_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation .`
(architectures from TORCH_CUDA_ARCH_LIST, default "8.0;9.0").
"""

import os

from setuptools import setup


def cuda_extension():
    if os.environ.get("SCC_KERNELS_BUILD_CUDA") != "1":
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError as error:
        raise RuntimeError("SCC_KERNELS_BUILD_CUDA=1 needs torch: pip install --no-build-isolation .") from error
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    extension = CUDAExtension(
        "scc_kernels._C",
        sources=["csrc/launchers.cu", "csrc/torch_binding.cpp"],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},  # no --use_fast_math: accuracy first
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(**cuda_extension())
