"""The GPU cost model behind scc_kernels.plan: device profiles, each (backend, path)'s modeled time, `Plan`.

Each candidate's modeled time is the sum of three terms:

    memory   bytes read and written in DRAM / the profile's bandwidth
    compute  FLOPs / the rate of the unit that runs them at the input dtype's precision
             (CUDA cores for FFTs and elementwise work; tensor cores for the DFT's dots:
             float32 inputs run "tf32x3", three TF32 products per product)
    launches kernel launches × the launch cost of that kind of kernel (torch ops pay Python
             dispatch; a Triton launch costs more than a C++ extension's)

They are added, not overlapped (kernels run one after the other; within one kernel the larger
term dominates and the smaller one is a pessimistic extra). The byte and FLOP counts are
written out per path below; the profiles hold the spec-sheet rates of each GPU. Pure arithmetic:
no timing, nothing above _options (planning.py picks, autotune.py measures).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .backends import dft_tiles

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
class Workload:
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
    atomics: bool = False  # order-dependent float32 atomics: left out in deterministic mode on a GPU
    memory_ms: float = 0.0
    compute_ms: float = 0.0
    launch_ms: float = 0.0
    measured_ms: float | None = None

    @property
    def modeled_ms(self) -> float:
        return self.memory_ms + self.compute_ms + self.launch_ms


def _io_bytes(p: Workload) -> float:
    """Reading logits and labels and writing the gradient, once each: every path's floor."""
    batch, channels = p.shape[:2]
    logits = batch * channels * p.pixels * p.element
    return 2 * logits + batch * p.pixels * 8 + logits  # forward and backward read; gradient write


def _fft_bytes(p: Workload, signals: int) -> float:
    """`signals` real transforms per slice, forward or inverse: cuFFT reads and writes the data
    about once per axis (real side float32, half spectrum complex64)."""
    return len(p.shape[2:]) * signals * p.slices * (4 * p.pixels + 8 * p.half_bins)


def _fft_flops(p: Workload, signals: int) -> float:
    return signals * p.slices * 2.5 * p.pixels * math.log2(max(p.pixels, 2))


def candidates(p: Workload, profile: Profile) -> list[Candidate]:
    """Every (backend, path) that could run `p`, with its bytes, FLOPs and launches."""
    slices, pixels, bins = p.slices, p.pixels, p.half_bins
    elementwise = 20 * slices * pixels  # activation, one-hot, products: ~20 FLOP per element
    found = []
    if p.parseval:
        # fused kernels: read logits and labels forward and backward, write the gradient
        for backend, launch in (("triton", profile.triton_launch_us), ("cuda", profile.cuda_launch_us)):
            found.append(Candidate(backend, "parseval", _io_bytes(p), elementwise, 0, 3, launch))
        # torch ops: ~14 float32 passes over (B, C, *S) and ~4 over the labels
        torch_bytes: float = 14 * 4 * p.shape[0] * p.shape[1] * pixels + 4 * 8 * p.shape[0] * pixels
        found.append(Candidate("torch", "parseval", torch_bytes, elementwise, 0, 40, profile.torch_op_us))
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
            found.append(Candidate(backend, "fft", fused, fft_flops, 0, 8 + 3 * len(p.shape[2:]), launch))
        # torch ops: ~45 float32 passes over the half bins (values, two-pass statistics, the
        # per-bin gradient) and ~12 over (B, C, *S), the same transforms
        torch_bytes = _io_bytes(p) + 45 * 4 * slices * bins + 12 * 4 * slices * pixels + _fft_bytes(p, 3)
        found.append(Candidate("torch", "fft", torch_bytes, fft_flops, 0, 120, profile.torch_op_us))
        dft = _dft_cost(p, profile)
        if dft is not None:
            found.append(dft)
    # the reference: full complex spectra, autograd's saved tensors, ~40 passes over them
    reference_bytes = _io_bytes(p) + 40 * 8 * slices * pixels + 2 * _fft_bytes(p, 2)
    found.append(
        Candidate("reference", "fft", reference_bytes, _fft_flops(p, 4) * 2, 0, 60 + 12 * p.bands, profile.torch_op_us)
    )
    return [_timed(candidate, profile) for candidate in found]


def dft_tensor_flops(p: Workload) -> float | None:
    """Tensor-core FLOPs of one forward + backward on the triton DFT path: dft_tiles.flop_count (the
    one FLOP count of those kernels) per slice, × 3 for float32 inputs ("tf32x3": three TF32 products
    per product). None where the kernels do not run the shape."""
    spatial = tuple(p.shape[2:])
    if not dft_tiles.supported(spatial):
        return None
    forward, backward = dft_tiles.flop_count(spatial)
    precision_factor = 3 if p.dtype == torch.float32 else 1
    return precision_factor * p.slices * (forward + backward)


def _dft_cost(p: Workload, profile: Profile) -> Candidate | None:
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
        atomics=True,  # the backward adds each tile's share of the gradient with tl.atomic_add
    )


def _timed(c: Candidate, profile: Profile) -> Candidate:
    return dataclasses.replace(
        c,
        memory_ms=c.bytes / (profile.dram_gbps * 1e6),
        compute_ms=c.fp32_flops / (profile.fp32_tflops * 1e9) + c.tensor_flops / (profile.tf32_tflops * 1e9),
        launch_ms=c.launches * c.launch_us / 1e3,
    )


def dominant_term(c: Candidate) -> str:
    return max((c.memory_ms, "memory"), (c.compute_ms, "compute"), (c.launch_ms, "launch"))[1]


@dataclasses.dataclass(frozen=True)
class Plan:
    backend: str
    path: str
    reason: str
    profile: Profile
    workload: Workload
    candidates: tuple[Candidate, ...]  # every candidate, fastest modeled first

    def __str__(self) -> str:
        p = self.workload
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


def profile_name(device: torch.device) -> str | None:
    """The spec-sheet profile matching a CUDA device's name, else None (estimated from its properties)."""
    name = torch.cuda.get_device_name(device)
    return next((key for key in PROFILES if key in name), None)
