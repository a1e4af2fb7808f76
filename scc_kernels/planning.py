"""Which backend and path run a problem on a GPU: a cost model users can read, and optional autotuning.

    chosen = scc_kernels.plan((2, 4, 128, 128, 128), spectrum="amplitude", gpu="H200")
    print(chosen)              # the candidates, their modeled times and roofline terms, the pick
    chosen.backend, chosen.path

Paths: "parseval" (complex spectrum with one band: one pass over the data, no transform), "fft"
(torch.fft / cuFFT with fused kernels around it), "dft" (the Triton DFT-as-matmul kernels, all
fused, no spectrum in memory). Each candidate's modeled time is the sum of three terms:

    memory   bytes read and written in DRAM / the profile's bandwidth
    compute  FLOPs / the rate of the unit that runs them at the input dtype's precision
             (CUDA cores for FFTs and elementwise work; tensor cores for the DFT's dots:
             float32 inputs run "tf32x3", three TF32 products per product)
    launches kernel launches × the launch cost of that kind of kernel (torch ops pay Python
             dispatch; a Triton launch costs more than a C++ extension's)

They are added, not overlapped (kernels run one after the other; within one kernel the larger
term dominates and the smaller one is a pessimistic extra). The byte and FLOP counts are
written out per path below; the profiles hold the spec-sheet rates of each GPU. The model picks
only among candidates that can run here (for the current device) and, with `deterministic`,
among those without order-dependent float32 atomics (the DFT backward has them).

Autotuning (`SCC_KERNELS_AUTOTUNE=1`, or `plan(..., autotune=True)`) times the runnable
candidates once per problem signature on the current device, forward + backward, and caches the
fastest in this process and in a JSON file (`$SCC_KERNELS_CACHE`, default
~/.cache/scc_kernels/autotune.json), keyed by device name, torch and triton versions, the problem
and the candidate set (so deterministic mode, or a dtype some paths cannot run, has its own
entries). The file is an optimisation: one that cannot be read, written or understood gives a
warning (once) and autotuning goes on without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import operator
import os
import tempfile
from typing import TypeGuard

import torch

from ._options import make_options, warn_caller_once
from .backends import _supports_dtype, dft_tiles

# ----------------------------------------------------------------------------------------------
# device profiles: spec-sheet rates (dense, no sparsity)


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    dram_gbps: float  # DRAM bandwidth, GB/s (bytes read + written)
    fp32_tflops: float  # CUDA cores, float32 FMA
    tf32_tflops: float  # tensor cores, TF32 inputs, float32 accumulate
    torch_op_us: float = 8.0  # one torch op: Python dispatch + launch
    triton_launch_us: float = 20.0  # Triton's Python launcher
    cuda_launch_us: float = 6.0  # a C++ extension's launch (one Python call)


PROFILES = {
    # NVIDIA datasheets: H200 SXM 4.8 TB/s HBM3e, H100 SXM 3.35 TB/s, A100 SXM 80GB 2.04 TB/s;
    # fp32 67 / 67 / 19.5 TFLOP/s; dense tf32 495 / 495 / 156 TFLOP/s
    "H200": Profile("NVIDIA H200", 4800, 67, 495),
    "H100": Profile("NVIDIA H100", 3350, 67, 495),
    "A100": Profile("NVIDIA A100", 2039, 19.5, 156),
}


def profile_of(device: torch.device | str | None = None) -> Profile:
    """The profile of a CUDA device: the matching spec sheet by name, else rates estimated from
    its properties (memory clock and bus width; SMs × clock × 128 FP32 lanes; TF32 ≈ 7.4× FP32)."""
    props = torch.cuda.get_device_properties(device)
    for key, profile in PROFILES.items():
        if key in props.name:
            return profile
    clock_ghz = getattr(props, "clock_rate", 1_500_000) / 1e6
    dram = 2 * getattr(props, "memory_clock_rate", 1_500_000) * 1e3 * getattr(props, "memory_bus_width", 4096) / 8 / 1e9
    fp32 = props.multi_processor_count * 128 * 2 * clock_ghz / 1e3
    return Profile(props.name, dram, fp32, 7.4 * fp32)


# ----------------------------------------------------------------------------------------------
# the problem and its cost on each path


@dataclasses.dataclass(frozen=True)
class Problem:
    """What the model needs: shapes, options, dtype (a label map target, as in training)."""

    shape: tuple[int, ...]  # input (B, C, *S)
    spectrum: str = "amplitude"
    bands: int = 1
    dtype: torch.dtype = torch.float32
    include_background: bool = True

    @property
    def slices(self) -> int:  # (b, c') pairs
        return self.shape[0] * (self.shape[1] - (0 if self.include_background else 1))

    @property
    def pixels(self) -> int:  # per slice
        return math.prod(self.shape[2:])

    @property
    def half_bins(self) -> int:  # rfftn bins per slice
        spatial = self.shape[2:]
        return math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1)

    @property
    def parseval(self) -> bool:
        return self.spectrum == "complex" and self.bands == 1

    @property
    def element(self) -> int:  # bytes per input element
        return torch.finfo(self.dtype).bits // 8


@dataclasses.dataclass(frozen=True)
class Candidate:
    backend: str
    path: str
    bytes: float  # DRAM bytes, forward + backward
    fp32_flops: float  # on CUDA cores
    tensor_flops: float  # on tensor cores (the DFT's dots), already × 3 for tf32x3
    launches: float
    launch_us: float
    memory_ms: float = 0.0
    compute_ms: float = 0.0
    launch_ms: float = 0.0
    measured_ms: float | None = None

    @property
    def modeled_ms(self) -> float:
        return self.memory_ms + self.compute_ms + self.launch_ms


def _io_bytes(p: Problem) -> float:
    """Reading logits and labels and writing the gradient, once each: every path's floor."""
    batch, channels = p.shape[:2]
    logits = batch * channels * p.pixels * p.element
    return 2 * logits + batch * p.pixels * 8 + logits  # forward and backward read; gradient write


def _fft_bytes(p: Problem, signals: int) -> float:
    """`signals` real transforms per slice, forward or inverse: cuFFT reads and writes the data
    about once per axis (real side float32, half spectrum complex64)."""
    return len(p.shape[2:]) * signals * p.slices * (4 * p.pixels + 8 * p.half_bins)


def _fft_flops(p: Problem, signals: int) -> float:
    return signals * p.slices * 2.5 * p.pixels * math.log2(max(p.pixels, 2))


def _costs(p: Problem, profile: Profile) -> list[Candidate]:
    """Every (backend, path) that could run `p`, with its bytes, FLOPs and launches."""
    slices, pixels, bins = p.slices, p.pixels, p.half_bins
    elementwise = 20 * slices * pixels  # activation, one-hot, products: ~20 FLOP per element
    candidates = []
    if p.parseval:
        # fused kernels: read logits and labels forward and backward, write the gradient
        for backend, launch in (("triton", profile.triton_launch_us), ("cuda", profile.cuda_launch_us)):
            candidates.append(Candidate(backend, "parseval", _io_bytes(p), elementwise, 0, 3, launch))
        # torch ops: ~14 float32 passes over (B, C, *S) and ~4 over the labels
        torch_bytes: float = 14 * 4 * p.shape[0] * p.shape[1] * pixels + 4 * 8 * p.shape[0] * pixels
        candidates.append(Candidate("torch", "parseval", torch_bytes, elementwise, 0, 40, profile.torch_op_us))
    else:
        # fused kernels around cuFFT: prologue writes base and x − y (float32); 2 forward
        # transforms; the statistics epilogue reads both spectra; the backward reads them again,
        # writes the spectral gradient, 1 inverse transform, and the activation backward
        signals = 2 * 4 * slices * pixels
        spectra = 2 * 8 * slices * bins
        fused = (
            _io_bytes(p)
            + signals
            + _fft_bytes(p, 2)
            + spectra
            + spectra
            + 8 * slices * bins
            + _fft_bytes(p, 1)
            + 2 * 4 * slices * pixels
        )
        fft_flops = _fft_flops(p, 3) + elementwise + 30 * slices * bins
        for backend, launch in (("triton", profile.triton_launch_us), ("cuda", profile.cuda_launch_us)):
            candidates.append(Candidate(backend, "fft", fused, fft_flops, 0, 8 + 3 * len(p.shape[2:]), launch))
        # torch ops: ~45 float32 passes over the half bins (values, two-pass statistics, the
        # per-bin gradient) and ~12 over (B, C, *S), the same transforms
        torch_bytes = _io_bytes(p) + 45 * 4 * slices * bins + 12 * 4 * slices * pixels + _fft_bytes(p, 3)
        candidates.append(Candidate("torch", "fft", torch_bytes, fft_flops, 0, 120, profile.torch_op_us))
        dft = _dft_cost(p, profile)
        if dft is not None:
            candidates.append(dft)
    # the reference: full complex spectra, autograd's saved tensors, ~40 passes over them
    reference_bytes = _io_bytes(p) + 40 * 8 * slices * pixels + 2 * _fft_bytes(p, 2)
    candidates.append(
        Candidate("reference", "fft", reference_bytes, _fft_flops(p, 4) * 2, 0, 60 + 12 * p.bands, profile.torch_op_us)
    )
    return [_timed(candidate, profile) for candidate in candidates]


def dft_tensor_flops(p: Problem) -> float | None:
    """Tensor-core FLOPs of one forward + backward on the triton DFT path: dft_tiles.flop_count (the
    one FLOP count of those kernels) per slice, × 3 for float32 inputs ("tf32x3": three TF32 products
    per product). None where the kernels do not run the shape."""
    spatial = tuple(p.shape[2:])
    if not dft_tiles.supported(spatial):
        return None
    forward, backward = dft_tiles.flop_count(spatial)
    precision_factor = 3 if p.dtype == torch.float32 else 1
    return precision_factor * p.slices * (forward + backward)


def _dft_cost(p: Problem, profile: Profile) -> Candidate | None:
    """The DFT-as-matmul kernels (`dft_tensor_flops`), where their tiles reach."""
    tensor_flops = dft_tensor_flops(p)
    if tensor_flops is None:
        return None
    # inputs come from DRAM once per slice (the tiles re-read them from L2); the backward adds
    # into a float32 buffer once per (pixel, tile): atomics resolved in L2, counted at 1/4
    atomics = 8 * p.slices * p.pixels * dft_tiles.plan_tiles(tuple(p.shape[2:])).num_tiles
    return Candidate(
        "triton",
        "dft",
        _io_bytes(p) + 8 * p.slices * p.pixels + atomics / 4,
        0,
        tensor_flops,
        3,
        profile.triton_launch_us,
    )


def _timed(c: Candidate, profile: Profile) -> Candidate:
    return dataclasses.replace(
        c,
        memory_ms=c.bytes / (profile.dram_gbps * 1e6),
        compute_ms=c.fp32_flops / (profile.fp32_tflops * 1e9) + c.tensor_flops / (profile.tf32_tflops * 1e9),
        launch_ms=c.launches * c.launch_us / 1e3,
    )


# ----------------------------------------------------------------------------------------------
# the pick


ATOMIC_PATHS = {("triton", "dft")}  # order-dependent float32 atomics in the backward


def _allowed(c: Candidate, deterministic: bool) -> bool:
    """A fast path that may run: deterministic mode leaves out the atomic ones."""
    return c.backend != "reference" and not (deterministic and (c.backend, c.path) in ATOMIC_PATHS)


@dataclasses.dataclass(frozen=True)
class Plan:
    backend: str
    path: str
    reason: str
    profile: Profile
    problem: Problem
    candidates: tuple[Candidate, ...]  # every candidate, fastest modeled first

    def __str__(self) -> str:
        p = self.problem
        shape = "x".join(map(str, p.shape))
        lines = [
            f"plan for {shape} {p.spectrum}, bands={p.bands}, {str(p.dtype).removeprefix('torch.')} on "
            f"{self.profile.name} ({self.profile.dram_gbps:.0f} GB/s, fp32 {self.profile.fp32_tflops:g} / "
            f"tf32 {self.profile.tf32_tflops:g} TFLOP/s)",
            f"{'backend':<10} {'path':<9} {'model ms':>9} {'memory':>8} {'compute':>8} {'launch':>7} "
            f"{'GB':>8} {'GFLOP':>9} {'measured':>9}",
        ]
        for c in self.candidates:
            measured = "-" if c.measured_ms is None else f"{c.measured_ms:.3f}"
            mark = "  <- pick" if (c.backend, c.path) == (self.backend, self.path) else ""
            lines.append(
                f"{c.backend:<10} {c.path:<9} {c.modeled_ms:9.3f} {c.memory_ms:8.3f} {c.compute_ms:8.3f} "
                f"{c.launch_ms:7.3f} {c.bytes / 1e9:8.3f} {(c.fp32_flops + c.tensor_flops) / 1e9:9.1f} "
                f"{measured:>9}{mark}"
            )
        lines.append(f"pick: {self.backend} / {self.path}: {self.reason}")
        return "\n".join(lines)


def plan(
    input_shape,
    *,
    spectrum: str = "amplitude",
    bands: int | None = None,
    dtype: torch.dtype = torch.float32,
    gpu: str | None = None,
    deterministic: bool = False,
    include_background: bool = True,
    autotune: bool | None = None,
) -> Plan:
    """The backend and path for an input of `input_shape` (B, C, *S) on a GPU.

    gpu: a profile name ("H200", "H100", "A100"): the model only, every candidate considered;
    None: the current CUDA device (its profile, and only the backends that can run on it).
    deterministic: leave out paths with order-dependent atomics (also when
    torch.are_deterministic_algorithms_enabled()). autotune: time the candidates on the current
    device once per problem and pick the fastest measured (default: $SCC_KERNELS_AUTOTUNE where
    gpu is None; a named profile is the model only).
    """
    options = make_options(spectrum=spectrum, bands=bands)  # scc_loss's checks of these two
    shape = _checked_shape(input_shape)
    # as scc_loss, which ignores include_background=False for a single channel
    include_background = bool(include_background) or shape[1] == 1
    problem = Problem(shape, spectrum, options.num_bands, _checked_dtype(dtype), include_background)
    if gpu is not None and gpu not in PROFILES:
        raise ValueError(f"gpu must be one of {tuple(PROFILES)} or None (the current device), got {gpu!r}")
    if gpu is None and not torch.cuda.is_available():
        raise RuntimeError("plan(gpu=None) needs a CUDA device; name a profile (gpu='H200') to model one")
    profile = PROFILES[gpu] if gpu is not None else profile_of()
    deterministic = deterministic or torch.are_deterministic_algorithms_enabled()
    candidates = sorted(_costs(problem, profile), key=lambda c: c.modeled_ms)
    eligible = [c for c in candidates if _allowed(c, deterministic) and _supports_dtype(c.backend, dtype)]
    if gpu is None:
        eligible = [c for c in eligible if _runs_here(c.backend, dtype)]
    if autotune is None:
        autotune = gpu is None and os.environ.get("SCC_KERNELS_AUTOTUNE") == "1"
    if autotune:
        if gpu is not None:
            raise ValueError("autotune measures the current device: use gpu=None")
        measured = _autotune(problem, eligible)
        candidates = [dataclasses.replace(c, measured_ms=measured.get(_key(c))) for c in candidates]
        # only the eligible ones were timed: the pick is among them, whatever else is listed
        best = min((c for c in candidates if _key(c) in map(_key, eligible)), key=lambda c: measured[_key(c)])
        reason = f"fastest measured ({best.measured_ms:.3f} ms; the model said {best.modeled_ms:.3f} ms)"
    else:
        best = eligible[0]
        second = next((c for c in eligible[1:]), None)
        reason = f"lowest modeled time ({_dominant(best)}-bound)" + (
            f", {second.modeled_ms / best.modeled_ms:.1f}x ahead of {second.backend}/{second.path}" if second else ""
        )
    return Plan(best.backend, best.path, reason, profile, problem, tuple(candidates))


cached_plan = functools.lru_cache(maxsize=256)(plan)  # backend="auto" asks once per problem


def _checked_shape(input_shape) -> tuple[int, ...]:
    """`input_shape` as (B, C, *spatial) of ints >= 1 with 1 to 3 spatial sizes (scc_loss's layouts)."""
    try:
        shape = tuple(operator.index(size) for size in input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a sequence of ints (B, C, *spatial), got {input_shape!r}") from None
    if not 3 <= len(shape) <= 5 or min(shape) < 1 or any(isinstance(size, bool) for size in input_shape):
        raise ValueError(f"input_shape must be (B, C, *spatial), 1 to 3 spatial sizes, all >= 1, got {input_shape!r}")
    if math.prod(shape) >= 2**63:
        raise ValueError(f"input_shape {input_shape!r} has more elements than a tensor can hold (2**63)")
    return shape


def _checked_dtype(dtype) -> torch.dtype:
    """A floating torch.dtype, as scc_loss's input must be (SPEC §5: TypeError otherwise)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (torch.float32, ...), got {dtype!r}")
    return dtype


def _dominant(c: Candidate) -> str:
    return max((c.memory_ms, "memory"), (c.compute_ms, "compute"), (c.launch_ms, "launch"))[1]


def _runs_here(backend: str, dtype: torch.dtype) -> bool:
    """Can run on the current CUDA device now: the cuda backend only prebuilt (auto must not start
    a minute-long JIT compile that nobody asked for; backend="cuda" still may)."""
    from .backends import load, unavailable_reason

    if not _supports_dtype(backend, dtype) or unavailable_reason(backend, "cuda") is not None:
        return False
    return backend != "cuda" or load("cuda").build_status() == "prebuilt"


# ----------------------------------------------------------------------------------------------
# autotuning: measured once per signature, cached in the process and on disk

_measured: dict[str, dict[str, float]] = {}


def _key(c: Candidate) -> str:
    return f"{c.backend}/{c.path}"


def _cache_path() -> str:
    return os.environ.get(
        "SCC_KERNELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "scc_kernels", "autotune.json")
    )


def _signature(problem: Problem, device: torch.device, candidates: list[Candidate]) -> str:
    """Everything a measurement depends on: the device, the software, the problem, and the
    candidate set (which deterministic mode, the dtype and what runs here decide)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return json.dumps(
        [
            name,
            torch.__version__,
            triton_version,
            list(problem.shape),
            problem.spectrum,
            problem.bands,
            str(problem.dtype),
            problem.include_background,
            sorted(map(_key, candidates)),
        ]
    )


def _autotune(problem: Problem, candidates: list[Candidate], device: torch.device | None = None) -> dict[str, float]:
    """{"backend/path": fwd+bwd ms} for exactly `candidates`, measured on `device` (default: the
    current CUDA device), from the process cache, the disk cache, or by timing each candidate
    (median of 5). The disk cache is an optimisation: whatever it holds, or wherever it is, a
    bad one gives a warning and the timings are measured again, never an error."""
    device = device or torch.device("cuda")
    key = _signature(problem, device, candidates)
    if key not in _measured:
        disk = _read_cache()
        entry = disk.get(key) if disk is not None else None
        if _valid_entry(entry, candidates):
            _measured[key] = entry
        else:
            _measured[key] = {_key(c): _time_candidate(problem, c, device) for c in candidates}
            if disk is not None:
                disk[key] = _measured[key]
                _write_cache(disk)
    return _measured[key]


def _valid_entry(entry: object, candidates: list[Candidate]) -> TypeGuard[dict[str, float]]:
    """A time in ms for every candidate, and nothing else."""
    return (
        isinstance(entry, dict)
        and set(entry) == set(map(_key, candidates))
        and all(
            isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 <= ms < math.inf for ms in entry.values()
        )
    )


def _cache_trouble(path: str, what: str) -> None:
    warn_caller_once(f"scc_kernels: autotune cache {path!r} {what}; autotuning goes on without it")


def _read_cache() -> dict | None:
    """The disk cache's entries ({} when there is no file yet), or None when it cannot be used."""
    path = _cache_path()
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as file:
            entries = json.load(file)
    except (OSError, ValueError) as error:
        _cache_trouble(path, f"cannot be read ({type(error).__name__}: {error})")
        return None
    if not isinstance(entries, dict):
        _cache_trouble(path, f"holds a JSON {type(entries).__name__}, not an object")
        return None
    return entries


def _write_cache(entries: dict) -> None:
    path = _cache_path()
    folder = os.path.dirname(path) or "."  # a bare file name: the working directory
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        # a unique temporary name: ranks or processes that write at once do not collide
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as file:
            temporary = file.name
            json.dump(entries, file, indent=1)
        os.replace(temporary, path)  # atomic: a concurrent reader sees the old or the new file
    except OSError as error:
        _cache_trouble(path, f"cannot be written ({type(error).__name__}: {error})")
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.remove(temporary)


def _time_candidate(problem: Problem, c: Candidate, device: torch.device, repeats: int = 5) -> float:
    from .backends import path_override
    from .bench import time_ms
    from .functional import scc_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(problem.shape, generator=generator).to(device=device, dtype=problem.dtype).requires_grad_(True)
    labels = torch.randint(0, problem.shape[1], (problem.shape[0], *problem.shape[2:]), generator=generator).to(device)

    def step():
        with path_override(c.path):
            scc_loss(
                logits,
                labels,
                softmax=True,
                spectrum=problem.spectrum,
                bands=problem.bands,
                include_background=problem.include_background,
                backend=c.backend,
            ).backward()

    return time_ms(step, device, repeats, warmup=1)  # the first call compiles and warms up


def triton_path(
    shape: tuple[int, ...],
    spectrum: str,
    bands: int,
    dtype: torch.dtype,
    include_background: bool,
    device: torch.device,
) -> str:
    """ "dft" or "fft" for the triton backend on a CUDA device: the plan's choice between its two
    paths (autotuned if autotuning is on), deterministic mode excluding the DFT's atomics."""
    from .backends import forced_path

    if (path := forced_path()) is not None:
        return path
    # Sizes as ints: while tracing with fake tensors a size may be a SymInt, which the cache cannot
    # hash; int() guards the graph on it, so that a shape the plan sends down the other path (whose
    # forward saves other tensors) is traced anew rather than reusing this graph.
    return _triton_path(
        tuple(int(size) for size in shape),
        spectrum,
        bands,
        dtype,
        include_background,
        device,
        torch.are_deterministic_algorithms_enabled(),
        os.environ.get("SCC_KERNELS_AUTOTUNE") == "1",
    )


@functools.lru_cache(maxsize=256)
def _triton_path(shape, spectrum, bands, dtype, include_background, device, deterministic, autotune) -> str:
    problem = Problem(shape, spectrum, bands, dtype, include_background)
    name = _profile_name(device)
    profile = (PROFILES.get(name) if name is not None else None) or profile_of(device)
    triton = [c for c in _costs(problem, profile) if c.backend == "triton" and _allowed(c, deterministic)]
    if autotune:
        measured = _autotune(problem, triton, device)
        return min(triton, key=lambda c: measured[_key(c)]).path
    return min(triton, key=lambda c: c.modeled_ms).path


def _profile_name(device: torch.device) -> str | None:
    """The spec-sheet profile matching a CUDA device's name, else None (estimated from its properties)."""
    name = torch.cuda.get_device_name(device)
    return next((key for key in PROFILES if key in name), None)
