"""Building the CUDA C++ kernels, without a GPU: where the sources are, what compiles them, what a
wheel ships, and what importing and asking about the backends loads.

Every .cu file compiles for sm_80 and sm_90; the device header compiles on its own with every
kernel instance CuPy asks for (by nvcc, and by NVRTC where its library is installed); the torch
binding passes a syntax check against torch's headers; Python's launch constants are the
header's; csrc/ is found from a checkout and from an installed wheel; importing scc_kernels
loads neither the extension nor CuPy. The kernels themselves run in test_cuda_emulated.py (on
the CPU) and test_cuda_gpu.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from cuda_utils import CSRC, NVCC, assert_compiles, cuda_include

import scc_kernels
from scc_kernels._options import ACTIVATION_CODES
from scc_kernels.backends import _cuda_launch, cuda_backend
from scc_kernels.backends._cuda_build import EXTENSION_SOURCES
from scc_kernels.backends._sources import csrc_dir

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["cpu_kernels.c", "kernels.cuh", "launchers.cu", "launchers.h", "torch_binding.cpp"]
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc on PATH")


# ----------------------------------------------------------------------------------------------
# where the sources are: csrc/ in a checkout, scc_kernels/csrc once installed


def test_csrc_dir_holds_the_sources():
    """csrc/ at the top of the repository is a real directory (a symlink breaks Windows checkouts);
    run from the checkout (editable install or PYTHONPATH), the sources are read there."""
    root_csrc = ROOT / "csrc"
    assert root_csrc.is_dir() and not root_csrc.is_symlink()
    if Path(scc_kernels.__file__).resolve().parent == ROOT / "scc_kernels":
        assert csrc_dir() == root_csrc
    assert sorted(path.name for path in csrc_dir().iterdir()) == SOURCES


def test_setup_py_builds_the_extension_from_the_jit_sources():
    """SCC_KERNELS_BUILD_CUDA=1's CUDAExtension and the JIT build compile the same files."""
    sources = re.search(r"sources=\[([^]]*)\]", (ROOT / "setup.py").read_text()).group(1)
    assert re.findall(r'"([^"]+)"', sources) == [f"csrc/{name}" for name in EXTENSION_SOURCES]
    assert all((ROOT / "csrc" / name).is_file() for name in EXTENSION_SOURCES)


@pytest.mark.slow  # pip builds a wheel
def test_wheel_ships_the_sources_in_the_package(tmp_path):
    """A wheel built from this tree (a copy: the build writes build/ and egg-info next to it) holds
    csrc/ as scc_kernels/csrc, and csrc_dir finds that copy once the wheel is installed."""
    # built without isolation (no network): from the setuptools installed, with wheel where it is older than 70.1
    pytest.importorskip("setuptools", reason="needs setuptools installed")
    if importlib.util.find_spec("wheel") is None:
        pytest.importorskip("setuptools.command.bdist_wheel", reason="needs setuptools >= 70.1 or wheel installed")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (tree / name).write_bytes((ROOT / name).read_bytes())
    for folder in ("scc_kernels", "csrc"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(tree)]
    result = subprocess.run([*build, "-w", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = sorted(name for name in archive.namelist() if name.startswith("scc_kernels/csrc/"))
        assert packaged == [f"scc_kernels/csrc/{name}" for name in SOURCES]
        archive.extractall(tmp_path / "site")
    # the unpacked wheel first on sys.path, as an install of it; run elsewhere than the checkout,
    # whose scc_kernels/ would come first from the working directory
    code = "from scc_kernels.backends._sources import csrc_dir; print(csrc_dir())"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "site" / "scc_kernels" / "csrc"


# ----------------------------------------------------------------------------------------------
# the sources compile (all compilers start at once, each test waits for its own)


@needs_nvcc
@pytest.mark.slow
def test_cuda_sources_compile_for_sm80_and_sm90(compilations):
    sources = sorted(p.name for p in CSRC.glob("*.cu"))
    assert sources == ["launchers.cu"]
    for name in sources:
        assert_compiles(compilations, name)


@needs_nvcc
@pytest.mark.slow
def test_device_header_compiles_alone_with_every_cupy_kernel(compilations):
    assert_compiles(compilations, "header")


def _nvrtc_library() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (CUDA 13 or 12 layout), else from the loader path."""
    spec = importlib.util.find_spec("nvidia")
    for folder in spec.submodule_search_locations if spec else []:
        for candidate in sorted(Path(folder).glob("*/lib/libnvrtc.so.*")):
            if re.fullmatch(r"libnvrtc\.so\.\d+", candidate.name):
                return str(candidate)
    return ctypes.util.find_library("nvrtc")


@pytest.mark.slow
def test_device_header_compiles_with_nvrtc():
    """What CuPy does, without a GPU: NVRTC compiles the header to PTX with every kernel name."""
    library, include = _nvrtc_library(), cuda_include()
    if library is None or include is None:
        pytest.skip("needs the NVRTC library (pip install nvidia-cuda-nvrtc) and the CUDA toolkit's headers")
    nvrtc = ctypes.CDLL(library)
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    program = ctypes.c_void_p()
    source = (CSRC / "kernels.cuh").read_bytes()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"kernels.cuh", 0, None, None) == 0
    for name in _cuda_launch.kernel_names():
        assert nvrtc.nvrtcAddNameExpression(program, name.encode()) == 0
    options = [b"-std=c++17", b"-arch=compute_80", f"-I{include}".encode()]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert status == 0, f"{nvrtc.nvrtcGetErrorString(status).decode()}\n{log.value.decode()}"
    for name in _cuda_launch.kernel_names():
        lowered = ctypes.c_char_p()
        assert nvrtc.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(lowered)) == 0, name
        assert lowered.value.startswith(b"_ZN3scc")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def test_device_header_includes_only_what_nvrtc_has():
    source = (CSRC / "kernels.cuh").read_text()
    assert set(re.findall(r"#include\s*(\S+)", source)) == {"<cuda_fp16.h>", "<cuda_bf16.h>"}


@pytest.mark.slow
def test_binding_compiles_against_torch_headers(compilations):
    assert_compiles(compilations, "binding")


def test_python_constants_match_the_header():
    source = (CSRC / "kernels.cuh").read_text()
    for name in ("THREADS", "BAND_ITEMS"):
        assert int(re.search(rf"constexpr int {name} = (\d+);", source).group(1)) == getattr(_cuda_launch, name)
    codes = dict(re.findall(r"ACT_(\w+) = (\d+)", source))
    assert {k.lower(): int(v) for k, v in codes.items()} == ACTIVATION_CODES


# ----------------------------------------------------------------------------------------------
# import and availability, without a GPU


@pytest.mark.slow  # a fresh interpreter importing torch
def test_import_loads_neither_the_extension_nor_cupy():
    code = (
        "import sys, scc_kernels\n"
        "loaded = [m for m in ('scc_kernels._C', 'scc_kernels_cuda', 'cupy', 'scc_kernels.backends.cuda_backend',"
        " 'scc_kernels.backends.cupy_backend', 'scc_kernels.backends._cuda_build',"
        " 'scc_kernels.backends._cuda_launch') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "scc_kernels.available_backends()\n"  # asking what can run must not load or compile the extension
        "loaded = [m for m in ('scc_kernels._C', 'scc_kernels_cuda') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_build_status_and_availability():
    status = cuda_backend.build_status()
    assert status in ("prebuilt", "jit") or status.startswith("unavailable: ")
    if importlib.util.find_spec("scc_kernels._C") is not None:
        assert status == "prebuilt"
    assert "CUDA device" in cuda_backend.unavailable_reason(torch.device("cpu"))
    if torch.version.cuda is None:
        assert status == "unavailable: this torch build has no CUDA support"


# ----------------------------------------------------------------------------------------------
# the JIT build: which toolkit, and a failure remembered (the loader imitated: no GPU needed)


def _fake_toolkit(root: Path) -> Path:
    """A CUDA toolkit folder: bin/nvcc (printing the TOP line the real one prints with --dryrun)
    and include/cuda_runtime.h."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("// the fake toolkit's header\n")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "#$ TOP={root}/bin/.." >&2\n')
    nvcc.chmod(0o755)
    return root


@pytest.mark.parametrize("kind", ["wrapper script", "symlink"])
def test_cuda_home_is_the_toolkit_behind_the_nvcc_on_path(kind, tmp_path, monkeypatch):
    """On the GPU image /usr/local/bin/nvcc is a wrapper, torch guesses CUDA_HOME=/usr/local (no
    include/cuda_runtime.h there) and the build failed: the toolkit behind that nvcc is used."""
    from torch.utils import cpp_extension

    from scc_kernels.backends import _cuda_build

    toolkit = _fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    if kind == "symlink":
        wrapper.symlink_to(toolkit / "bin" / "nvcc")
    else:
        wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "local"))
    assert _cuda_build.cuda_home() == toolkit.resolve()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(toolkit))  # a right guess is kept
    assert _cuda_build.cuda_home() == toolkit
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    (toolkit / "include" / "cuda_runtime.h").unlink()  # nvcc without headers is no toolkit
    assert _cuda_build.cuda_home() is None


def test_a_failed_build_is_reported_and_not_retried(tmp_path, monkeypatch):
    """A JIT build that fails raises once with the compiler's error; afterwards build_status and
    unavailable_reason say why, and no call starts the ~50 s build again."""
    from torch.utils import cpp_extension

    from scc_kernels.backends import _cuda_build

    if importlib.util.find_spec("scc_kernels._C") is not None:
        pytest.skip("a prebuilt scc_kernels._C is installed: no JIT build to imitate")
    toolkit = _fake_toolkit(tmp_path / "cuda")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "local"))  # the wrong guess
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "local"))
    monkeypatch.setattr(_cuda_build, "cuda_home", lambda: toolkit)
    monkeypatch.setattr(_cuda_build, "_build_failure", None)
    builds = []

    def failing_load(**kwargs):
        builds.append(cpp_extension.CUDA_HOME)
        raise RuntimeError(
            "Error building extension 'scc_kernels_cuda': [1/3] nvcc -c launchers.cu\n"
            "launchers.cu:1:10: fatal error: cuda_runtime.h: No such file or directory\n"
            "ninja: build stopped: subcommand failed."
        )

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _cuda_build.extension.cache_clear()
    try:
        for _ in range(3):
            with pytest.raises(RuntimeError, match=r"JIT build of scc_kernels._C failed.*cuda_runtime.h: No such"):
                _cuda_build.extension()
    finally:
        _cuda_build.extension.cache_clear()
    assert builds == [str(toolkit)]  # built once, with CUDA_HOME set to the toolkit found
    assert os.environ["CUDA_HOME"] == str(toolkit)  # and for the compiler's subprocesses
    assert cuda_backend.build_status().startswith("unavailable: the JIT build of scc_kernels._C failed")
    assert "cuda_runtime.h" in cuda_backend.unavailable_reason(torch.device("cuda"))
    with pytest.raises(RuntimeError, match=r"JIT build of scc_kernels\._C failed"):  # what backend="cuda" raises
        scc_kernels.planning._checked_backend("cuda", torch.device("cuda"), torch.float32)
    assert len(builds) == 1
