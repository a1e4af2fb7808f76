"""The CUDA C++ kernels: torch extension ("cuda" backend) and the same kernels through CuPy ("cupy").

Without a GPU: every .cu file compiles for sm_80 and sm_90; the device header compiles on its
own with every kernel instance CuPy asks for (by nvcc, and by NVRTC where its library is
installed); the bindings pass a syntax check against torch's headers; the kernels themselves,
built for the CPU with tests/cuda_host_emulator.cpp, run behind the real op and glue and are
checked against the float64 reference with SPEC §4's tolerance (near-converged predictions and
bands of a few bins included); the CuPy launcher's arguments match the kernels' C++
signatures (with a stand-in for CuPy); importing scc_kernels loads neither the extension nor CuPy.
With a GPU: the same cases on both backends, and CuPy's FFT against the reference's spectra.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import inspect
import math
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from utils import assert_matches_reference, converged_problem, random_problem

import scc_kernels
from scc_kernels._options import ACTIVATION_CODES, Problem
from scc_kernels.backends import cuda_backend, load, torch_backend, unavailable_reason
from scc_kernels.bands import band_index
from scc_kernels.verify import huge_problem

CSRC = cuda_backend.CSRC
NVCC = shutil.which("nvcc")
ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
# what torch's extension build adds: the kernels must not rely on __half's C++ operators
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc on PATH")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ----------------------------------------------------------------------------------------------
# sources: compile without a GPU (all compilers start at once, each test waits for its own)


def _cuda_include() -> Path | None:
    from torch.utils.cpp_extension import CUDA_HOME

    for root in (CUDA_HOME, "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return Path(root) / "include"
    return None


def _header_check_source(directory: Path) -> Path:
    """A .cu file that includes only the device header and takes the address of every kernel
    instance CuPy names, so each template is instantiated as NVRTC would."""
    kernels = ",\n    ".join(f"(const void*)&{name}" for name in cuda_backend.kernel_names())
    source = directory / "header_only.cu"
    source.write_text(f'#include "{CSRC / "scc_kernels.cuh"}"\nconst void* kernels[] = {{\n    {kernels}}};\n')
    return source


def _bindings_command(directory: Path) -> list[str] | str:
    """g++ -fsyntax-only of bindings.cpp against torch's headers, or why that cannot run here."""
    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("c++") or shutil.which("g++")
    cuda_include = _cuda_include()
    if compiler is None or cuda_include is None:
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
    includes = [*include_paths(), sysconfig.get_paths()["include"], str(cuda_include), str(directory / "stub")]
    return [
        compiler,
        "-fsyntax-only",
        f"-std={std}",
        "-Wall",
        "-Werror",
        "-DTORCH_EXTENSION_NAME=_C",
        *(f"-I{p}" for p in includes),
        str(CSRC / "bindings.cpp"),
    ]


def _emulator_command(directory: Path) -> list[str] | str:
    """The device header and tests/cuda_host_emulator.cpp as a host library, or why not here."""
    compiler, cuda_include = shutil.which("c++") or shutil.which("g++"), _cuda_include()
    if compiler is None or cuda_include is None:
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
        f"-I{cuda_include}",
        str(Path(__file__).with_name("cuda_host_emulator.cpp")),
        "-o",
        str(directory / "host_kernels.so"),
    ]


@pytest.fixture(scope="module")
def compilations(tmp_path_factory):
    """name -> running compiler process (or the reason it cannot run here)."""
    directory = tmp_path_factory.mktemp("csrc")
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
    commands["bindings"] = _bindings_command(directory)
    commands["emulator"] = _emulator_command(directory)
    processes = {
        name: command
        if isinstance(command, str)
        else subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, command in commands.items()
    }
    yield processes
    for process in processes.values():
        if not isinstance(process, str) and process.poll() is None:
            process.kill()


def _assert_compiles(compilations, name):
    process = compilations[name]
    if isinstance(process, str):
        pytest.skip(process)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, f"{' '.join(process.args)}\n{output}"


@needs_nvcc
def test_cuda_sources_compile_for_sm80_and_sm90(compilations):
    sources = sorted(p.name for p in CSRC.glob("*.cu"))
    assert sources == ["scc_kernels.cu"]
    for name in sources:
        _assert_compiles(compilations, name)


@needs_nvcc
def test_device_header_compiles_alone_with_every_cupy_kernel(compilations):
    _assert_compiles(compilations, "header")


def _nvrtc_library() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (CUDA 13 or 12 layout), else from the loader path."""
    spec = importlib.util.find_spec("nvidia")
    for folder in spec.submodule_search_locations if spec else []:
        for candidate in sorted(Path(folder).glob("*/lib/libnvrtc.so.*")):
            if re.fullmatch(r"libnvrtc\.so\.\d+", candidate.name):
                return str(candidate)
    return ctypes.util.find_library("nvrtc")


def test_device_header_compiles_with_nvrtc():
    """What CuPy does, without a GPU: NVRTC compiles the header to PTX with every kernel name."""
    library, cuda_include = _nvrtc_library(), _cuda_include()
    if library is None or cuda_include is None:
        pytest.skip("needs the NVRTC library (pip install nvidia-cuda-nvrtc) and the CUDA toolkit's headers")
    nvrtc = ctypes.CDLL(library)
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    program = ctypes.c_void_p()
    source = (CSRC / "scc_kernels.cuh").read_bytes()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"scc_kernels.cuh", 0, None, None) == 0
    for name in cuda_backend.kernel_names():
        assert nvrtc.nvrtcAddNameExpression(program, name.encode()) == 0
    options = [b"-std=c++17", b"-arch=compute_80", f"-I{cuda_include}".encode()]
    status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert status == 0, f"{nvrtc.nvrtcGetErrorString(status).decode()}\n{log.value.decode()}"
    for name in cuda_backend.kernel_names():
        lowered = ctypes.c_char_p()
        assert nvrtc.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(lowered)) == 0, name
        assert lowered.value.startswith(b"_ZN3scc")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def test_device_header_includes_only_what_nvrtc_has():
    source = (CSRC / "scc_kernels.cuh").read_text()
    assert set(re.findall(r"#include\s*(\S+)", source)) == {"<cuda_fp16.h>", "<cuda_bf16.h>"}


def test_bindings_compile_against_torch_headers(compilations):
    _assert_compiles(compilations, "bindings")


def test_python_constants_match_the_header():
    source = (CSRC / "scc_kernels.cuh").read_text()
    for name in ("THREADS", "BAND_ITEMS"):
        assert int(re.search(rf"constexpr int {name} = (\d+);", source).group(1)) == getattr(cuda_backend, name)
    codes = dict(re.findall(r"ACT_(\w+) = (\d+)", source))
    assert {k.lower(): int(v) for k, v in codes.items()} == ACTIVATION_CODES


def test_csrc_path_at_the_repository_root_is_the_package_sources():
    root_csrc = Path(__file__).resolve().parent.parent / "csrc"
    assert root_csrc.resolve() == CSRC


# ----------------------------------------------------------------------------------------------
# import and availability, without a GPU


def test_import_loads_neither_the_extension_nor_cupy():
    code = (
        "import sys, scc_kernels\n"
        "loaded = [m for m in ('scc_kernels._C', 'scc_kernels_cuda', 'cupy', 'scc_kernels.backends.cuda_backend',"
        " 'scc_kernels.backends.cupy_backend') if m in sys.modules]\n"
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
# the kernels on the CPU: scc_kernels.cuh built by the host compiler with
# tests/cuda_host_emulator.cpp (a std::thread per CUDA thread), driven by the shared glue


SCALAR_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # scc::Scalar
TARGET_CODES = {torch.uint8: 0, torch.int32: 1, torch.int64: 2, torch.float32: 3}  # scc::Target


@pytest.fixture(scope="module")
def host_kernels(compilations):
    _assert_compiles(compilations, "emulator")
    return _HostLauncher(ctypes.CDLL(compilations["emulator"].args[-1]))


def _pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if tensor is None else tensor.data_ptr())


class _HostLauncher:
    """cuda_backend's launcher protocol on the emulator's launchers, with the arguments that
    bindings.cpp derives (its checks left out: the glue's shapes are tested on their own)."""

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

    def parseval_forward(self, logits, target, partials, problem):
        self._activation(self.lib.parseval_forward, logits, target, [partials], problem, partials.shape[1], False)

    def activate(self, logits, target, base_is_x, base, d, problem, blocks):
        self._activation(self.lib.activate, logits, target, [base_is_x, base, d], problem, blocks, False)

    def activation_backward(self, logits, target, coefficients, grad_x, grad_input, problem, blocks):
        pointers = [coefficients, grad_x, grad_input]
        self._activation(self.lib.activation_backward, logits, target, pointers, problem, blocks, True)

    def band_stats(self, S, D, base_is_x, band, weight, partials, amplitude):
        slices, bins = S.shape
        self.lib.band_stats(
            *map(_pointer, (S, D, base_is_x, band, weight, partials)),
            ctypes.c_longlong(slices),
            ctypes.c_int(partials.shape[1]),
            ctypes.c_longlong(bins),
            ctypes.c_int(partials.shape[2]),
            ctypes.c_int(amplitude),
        )

    def spectral_grad(self, S, D, base_is_x, band, coefficients, G, amplitude, blocks):
        slices, bins = S.shape
        self.lib.spectral_grad(
            *map(_pointer, (S, D, base_is_x, band, coefficients, G)),
            ctypes.c_int(blocks),
            ctypes.c_longlong(slices),
            ctypes.c_longlong(bins),
            ctypes.c_int(coefficients.shape[1]),
            ctypes.c_int(amplitude),
        )


@pytest.mark.parametrize("spectrum, bands", [("complex", None), ("amplitude", 3), ("complex", 2)])
def test_saved_tensors_match_the_fake(host_kernels, spectrum, bands):
    """What the op returns is what its fake implementation promises torch.compile."""
    problem = Problem(spectrum, bands or 1, "softmax", None, False)
    logits, target = _make_problem((9, 10), {}, "int64", torch.float32, "cpu")
    got = cuda_backend.forward(host_kernels, logits, target, problem)
    fake = cuda_backend.band_stats_fake(logits, target, problem)
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in fake]


# ----------------------------------------------------------------------------------------------
# the kernels against the float64 reference: on the CPU through the emulator behind the real op
# and glue ("emulated"), and on a GPU through both backends


@pytest.fixture(params=["emulated", "cuda", "cupy"])
def backend(request, monkeypatch):
    """(backend name, device) to run the kernels with."""
    if request.param == "emulated":
        launcher = request.getfixturevalue("host_kernels")
        monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda device: None)
        monkeypatch.setattr(cuda_backend, "_extension", lambda: None)
        monkeypatch.setattr(cuda_backend, "_Launcher", lambda extension: launcher)
        return "cuda", "cpu"
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = unavailable_reason(request.param, "cuda")
    if reason is not None:
        pytest.skip(f"backend {request.param!r} cannot run here: {reason}")
    return request.param, "cuda"


# (spatial, options, target): odd, even and 16-byte-aligned sizes, 1D to 3D, every option
CASES = [
    ((17, 23), dict(spectrum="complex"), "int64"),
    ((17, 23), dict(spectrum="complex", softmax=True, ignore_index=255), "uint8"),
    ((16, 24), dict(spectrum="complex", sigmoid=True), "dense"),
    ((9, 11, 13), dict(spectrum="complex", softmax=True, include_background=False, batch=True), "int64"),
    ((33, 31), dict(spectrum="amplitude", softmax=True), "int64"),
    ((32, 32), dict(spectrum="amplitude", bands=3, sigmoid=True, band_weights=[1.0, 0.0, 2.5]), "dense"),
    ((31, 32), dict(spectrum="amplitude", bands=3, softmax=True, ignore_index=-1, include_background=False), "int32"),
    ((7, 9, 10), dict(spectrum="complex", bands=3, softmax=True, ignore_index=255), "uint8"),
    ((7, 9, 10), dict(spectrum="amplitude", softmax=True, batch=True), "dense"),
    ((61,), dict(spectrum="amplitude", bands=2), "int64"),
]


def _make_problem(spatial, options, target_kind, dtype, device, batch=2, channels=3):
    logits, target = random_problem(
        batch,
        channels,
        spatial,
        label_map=target_kind != "dense",
        ignore_index=options.get("ignore_index"),
        dtype=dtype,
        device=device,
    )
    if target_kind in ("uint8", "int32"):
        target = target.to(getattr(torch, target_kind))
    return logits, target


@pytest.mark.parametrize("spatial, options, target_kind", CASES)
def test_matches_reference_float32(backend, spatial, options, target_kind):
    name, device = backend
    logits, target = _make_problem(spatial, options, target_kind, torch.float32, device)
    assert_matches_reference(name, logits, target, **options)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spatial, options, target_kind", [CASES[1], CASES[2], CASES[6], CASES[8]])
def test_matches_reference_half_types(backend, dtype, spatial, options, target_kind):
    name, device = backend
    logits, target = _make_problem(spatial, options, target_kind, dtype, device)
    assert_matches_reference(name, logits, target, **options)


@pytest.mark.parametrize("spectrum", ["complex", "amplitude"])
def test_grid_stride_loops(backend, spectrum, monkeypatch):
    """One block per batch item and slice: every kernel's grid-stride loop takes several turns."""
    name, device = backend
    monkeypatch.setattr(cuda_backend, "MAX_BLOCKS", 1)
    logits, target = _make_problem((33, 35), {"ignore_index": 255}, "uint8", torch.float32, device)
    options = dict(spectrum=spectrum, softmax=True, ignore_index=255, include_background=False)
    assert_matches_reference(name, logits, target, **options)


def test_more_bands_than_a_chunk(backend):
    """Two passes of band_stats over the bands (40 > BAND_CHUNK), many of a few bins: SPEC §4's
    precision end to end, which centred statistics make reachable where raw sums cancelled."""
    name, device = backend
    logits, target = _make_problem((45, 47), {}, "int64", torch.float32, device)
    assert_matches_reference(name, logits, target, spectrum="amplitude", bands=40, sigmoid=True)


# near-converged predictions (losses of about 1e-3 at confidence 4, 1e-5 at 8; bands raise them):
# where raw sums or 1 − a rounded r lose every digit. Small shapes: the emulator is slow.
CONVERGED = [
    ((15, 14), dict(spectrum="amplitude")),
    ((15, 14), dict(spectrum="complex")),
    ((15, 14), dict(spectrum="amplitude", bands=4)),
    ((7, 8, 9), dict(spectrum="complex", bands=4)),
    ((7, 8, 9), dict(spectrum="amplitude", batch=True)),
    ((7, 8, 9), dict(spectrum="complex", batch=True)),
]


@pytest.mark.parametrize("confidence", [4, 8])
@pytest.mark.parametrize("spatial, options", CONVERGED)
def test_near_converged_predictions(backend, spatial, options, confidence):
    name, device = backend
    generator = torch.Generator().manual_seed(confidence)
    logits, labels = converged_problem(2, 3, spatial, confidence=confidence, device=device, generator=generator)
    assert_matches_reference(name, logits, labels, softmax=True, **options)


@pytest.mark.parametrize(
    "magnitude, spectrum, bands", [(1e15, "amplitude", None), (1e15, "complex", 3), (1e30, "amplitude", 3)]
)
def test_huge_inputs(backend, magnitude, spectrum, bands):
    """No activation, inputs far larger than the target: the target is each slice's base (the
    kernels' other branch), and the result is right, or NaN where a float32 sum overflows."""
    name, device = backend
    logits, target = huge_problem(
        2, 2, (17, 19), magnitude=magnitude, device=device, generator=torch.Generator().manual_seed(0)
    )
    assert_matches_reference(name, logits, target, spectrum=spectrum, bands=bands)


@pytest.mark.parametrize("spectrum", ["complex", "amplitude"])
def test_stats_match_the_torch_backend(backend, spectrum):
    """The kernels' statistics (block partials, merged) are the torch backend's up to float32
    rounding of the band's values (its means times √count and its m2s to the size of its norm²);
    so is the gradient for the same grad_stats. 40 bands: two chunks, some empty, many of a few bins."""
    name, device = backend
    problem = Problem(spectrum, 40, "sigmoid", None, True)
    logits, target = _make_problem((21, 23), {}, "int64", torch.float32, device)
    expected = torch_backend.band_stats(logits, target, problem)
    got = load(name).band_stats(logits, target, problem)
    assert (got[0].shape, got[0].dtype) == (expected[0].shape, expected[0].dtype)  # saved tensors differ
    stats, reference = got[0].double(), expected[0].double()
    count = reference[..., :1]
    assert torch.equal(stats[..., :1], count)
    largest_mean = reference[..., 1:3].abs().amax(-1, keepdim=True)
    norm = reference[..., 4:6].amax(-1, keepdim=True).sqrt() + count.sqrt() * largest_mean
    norm = norm.clamp(min=1e-30)  # an empty band: every statistic 0 on both sides
    assert ((stats[..., 1:4] - reference[..., 1:4]).abs() * count.sqrt() / norm).max() <= 1e-5
    assert ((stats[..., 4:] - reference[..., 4:]).abs() / norm**2).max() <= 1e-5
    grad_stats = torch.randn_like(expected[0])
    expected_grad = torch_backend.band_stats_backward(grad_stats, expected[0], logits, target, expected[1:], problem)
    grad = load(name).band_stats_backward(grad_stats, got[0], logits, target, got[1:], problem)
    assert ((grad - expected_grad).norm() / expected_grad.norm()).item() <= 1e-5


def test_deterministic_and_unaligned_views(backend):
    """Bitwise the same twice; a logits view 4 bytes past a 16-byte boundary takes the scalar loads."""
    name, device = backend
    logits = torch.randn(2 * 3 * 16 * 16 + 1, device=device)[1:].view(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16), device=device)
    for spectrum in ("complex", "amplitude"):
        options = dict(spectrum=spectrum, softmax=True, reduction="none")
        first = scc_kernels.scc_loss(logits, target, backend=name, **options)
        assert torch.equal(first, scc_kernels.scc_loss(logits, target, backend=name, **options))
        reference = scc_kernels.scc_loss(logits.double(), target, backend="reference", **options)
        torch.testing.assert_close(first.double(), reference, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the CuPy launcher without CuPy: every launch against the kernel's C++ signature


def _kernel_signatures() -> dict[str, list[str]]:
    """Kernel name (without template arguments) -> its parameters' C++ types, from the header."""
    source = (CSRC / "scc_kernels.cuh").read_text()
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
        import types

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

    problem = Problem(spectrum, num_bands, "softmax", 255, False)
    logits, target = random_problem(2, 3, (9, 10), ignore_index=255)
    target = target.to(torch.uint8)
    stats, *saved = cupy_backend.band_stats(logits, target, problem)
    cupy_backend.band_stats_backward(torch.ones_like(stats), stats, logits, target, saved, problem)

    ((code, options, names),) = fake.modules  # compiled once
    assert code == (CSRC / "scc_kernels.cuh").read_text() and "-std=c++17" in options
    assert names == cuda_backend.kernel_names()
    signatures = _kernel_signatures()
    launched = [name.split("<")[0].removeprefix("scc::") for name, *_ in fake.launches]
    expected = (
        ["parseval_forward", "activation_backward"]
        if problem.parseval
        else ["activate", "band_stats", "spectral_grad", "activation_backward"]
    )
    assert launched == expected
    for name, grid, block, args in fake.launches:
        assert name in names and block == (cuda_backend.THREADS,)
        assert all(isinstance(g, int) and g >= 1 for g in grid)
        kernel = name.split("<")[0].removeprefix("scc::")
        assert [type(a) for a in args] == [_numpy_type(t) for t in signatures[kernel]], name
        assert "<" not in name or name.endswith("<float, unsigned char>")  # the tensors' dtypes


# ----------------------------------------------------------------------------------------------
# on a GPU only


@needs_cuda
def test_reference_spectra_match_cupy_fft():
    """SPEC §3 from CuPy's FFT (full spectra, a mask per band) against the reference backend."""
    cupy = pytest.importorskip("cupy")
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64, device="cuda")
    y = torch.rand(2, 3, 9, 10, dtype=torch.float64, device="cuda")
    for spectrum in ("amplitude", "complex"):
        X = cupy.fft.fftn(cupy.asarray(x), axes=(2, 3), norm="ortho")
        Y = cupy.fft.fftn(cupy.asarray(y), axes=(2, 3), norm="ortho")
        if spectrum == "amplitude":
            X, Y = cupy.abs(X), cupy.abs(Y)
        X, Y = X.reshape(2, 3, -1), Y.reshape(2, 3, -1)
        bands = band_index((9, 10), 3).reshape(-1)
        r = []
        for j in range(3):
            in_band = cupy.asarray((bands == j).nonzero().reshape(-1).numpy())
            u, v = cupy.take(X, in_band, axis=-1), cupy.take(Y, in_band, axis=-1)
            u, v = u - u.mean(-1, keepdims=True), v - v.mean(-1, keepdims=True)
            s_uv, s_uu, s_vv = ((a * b.conj()).real.sum(-1) for a, b in ((u, v), (u, u), (v, v)))
            r.append((s_uv + 1e-5) / cupy.sqrt((s_uu + 1e-5) * (s_vv + 1e-5)))
        expected = torch.as_tensor(cupy.stack(r, -1).mean(-1).get())
        got = scc_kernels.spectral_correlation(x, y, spectrum=spectrum, bands=3, backend="reference")
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-12)
