"""Side-by-side timings behind `python -m scc_kernels bench`: every backend next to the reference.

Forward and forward+backward time (median, 20th and 80th percentiles after warm-up, every backend
and the floor timed side by side), peak extra memory, and optionally the time as a multiple of a
floor: on a CPU the transforms and activation the mode cannot avoid, measured in the same process
(`transform_floor`); on a GPU the modeled `Floors`. Method: docs/benchmarking.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from typing import Any

import torch

from ._options import compute_dtype
from .backends import torch_backend
from .backends.registry import FAST_BACKENDS, unavailable_reason
from .cost_model import Workload, dft_tensor_flops
from .functional import scc_loss
from .timing import interleaved_quantiles_ms, time_ms

MODES: dict[
    str, dict[str, Any]
] = {  # name → options; softmax logits and an integer label map, the usual training setup
    "complex": dict(spectrum="complex", softmax=True),
    "amplitude": dict(spectrum="amplitude", softmax=True),
    "amplitude-4bands": dict(spectrum="amplitude", softmax=True, bands=4),
    "amplitude-8bands": dict(spectrum="amplitude", softmax=True, bands=8),
    "amplitude-64bands": dict(spectrum="amplitude", softmax=True, bands=64),  # narrow bands: many segments
}
SHAPES = {
    "cpu": [(8, 4, 256, 256), (2, 4, 64, 64, 64)],  # a 2D training batch, a 3D patch batch
    "cuda": [(16, 4, 512, 512), (16, 4, 256, 256), (2, 4, 128, 128, 128)],
}
QUICK_SHAPES = {"cpu": [(4, 4, 128, 128), (1, 4, 32, 32, 32)], "cuda": [(16, 4, 256, 256), (2, 4, 64, 64, 64)]}


@dataclasses.dataclass
class Row:
    backend: str
    mode: str
    shape: str
    dtype: str
    forward_ms: float  # median
    forward_p20_ms: float
    forward_p80_ms: float
    forward_backward_ms: float  # median
    forward_backward_p20_ms: float
    forward_backward_p80_ms: float
    peak_extra_mib: float | None
    speedup: float | None = None  # forward+backward, reference median / this median
    # forward+backward floor: on a CPU the measured `transform_floor` (median, timed side by side
    # with the row); on a GPU bytes / copy bandwidth, or DFT FLOPs / matmul rate (`Floors`)
    floor_ms: float | None = None


def timed_backends(device: torch.device) -> list[str]:
    """The fast backends worth timing on `device`: those that can run there, but not Triton's
    interpreter on a CPU (its times say nothing about the kernels)."""
    return [
        name
        for name in FAST_BACKENDS
        if unavailable_reason(name, device) is None and not (name == "triton" and device.type == "cpu")
    ]


def make_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(device)
    return logits, labels


def _loss_steps(logits, labels, backend: str, options: dict):
    """The two timed steps on a fresh leaf: a forward without grad, and a forward + backward."""
    x = logits.clone().requires_grad_(True)

    def forward():
        with torch.no_grad():
            scc_loss(x, labels, backend=backend, **options)

    def forward_backward():
        scc_loss(x, labels, backend=backend, **options).backward()
        x.grad = None

    return forward, forward_backward


def peak_extra_mib(backend, mode, shape, dtype, device: torch.device) -> float:
    if device.type == "cuda":
        logits, labels = make_inputs(shape, dtype, device)
        logits.requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        scc_loss(logits, labels, backend=backend, **MODES[mode]).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # CPU: a fresh process; reset the kernel's peak-RSS mark (clear_refs 5) after the inputs exist
    code = (
        "import json, re, sys, torch; from scc_kernels.bench import make_inputs, MODES; "
        "from scc_kernels import scc_loss; a = json.loads(sys.argv[1]); "
        "x, y = make_inputs(tuple(a['shape']), getattr(torch, a['dtype']), 'cpu'); "
        "x.requires_grad_(True); "
        "scc_loss(x[:1, :, :2], y[:1, :2], backend=a['backend'], **MODES[a['mode']]).backward(); "
        "status = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
        "open('/proc/self/clear_refs', 'w').write('5'); base = status('VmRSS'); "
        "scc_loss(x, y, backend=a['backend'], **MODES[a['mode']]).backward(); "
        "print(status('VmHWM') - base)"
    )
    args = json.dumps(dict(backend=backend, mode=mode, shape=shape, dtype=str(dtype)[6:]))
    # a fixed mmap threshold: every large tensor is its own mapping, returned when freed, so the
    # peak RSS follows the live tensors instead of glibc's heap high-water mark
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.split()[-1]) / 1024  # /proc/self/status counts KiB


@dataclasses.dataclass
class Floors:
    """The two hardware rates a kernel's time is compared with, measured on this device."""

    copy_gbps: float  # bytes read + written per second by a large device copy, in GB/s
    matmul_tflops: float  # float32 matmul with TF32 tensor cores allowed, 8192², in TFLOP/s

    @staticmethod
    def measure(device: torch.device) -> Floors:
        n = 2**28 if device.type == "cuda" else 2**24
        a, b = torch.empty(n, device=device), torch.randn(n, device=device)
        copy_ms = time_ms(lambda: a.copy_(b), device, repeats=20)
        size = 8192 if device.type == "cuda" else 1024
        x, y = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        allow = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            matmul_ms = time_ms(lambda: x @ y, device, repeats=20)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allow
        return Floors(2 * n * 4 / copy_ms / 1e6, 2 * size**3 / matmul_ms / 1e9)

    def forward_backward_ms(self, mode: str, shape: tuple[int, ...], dtype: torch.dtype) -> float:
        """Reading logits and labels once and writing the gradient once; for transform modes, the
        triton DFT kernels' tensor-core FLOPs (`cost_model.dft_tensor_flops`) at the matmul rate, if
        that takes longer (where those kernels run the shape)."""
        batch, channels, *spatial = shape
        numel = batch * channels * math.prod(spatial)
        element = torch.finfo(dtype).bits // 8
        memory_ms = (2 * numel * element + numel // channels * 8) / (self.copy_gbps * 1e6)
        flops = None if mode == "complex" else dft_tensor_flops(Workload(tuple(shape), dtype=dtype))
        if flops is None:
            return memory_ms
        return max(memory_ms, flops / (self.matmul_tflops * 1e9))


def transforms_needed(options: dict) -> bool:
    """Whether a mode needs the transforms: all but the complex spectrum with one band (SPEC §3's
    Parseval identity: one pass over the samples, no transform)."""
    return options.get("spectrum", "amplitude") != "complex" or options.get("bands") is not None


def transform_floor(mode: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """One forward+backward of the work the mode cannot avoid, as a callable, at the row's shape and
    dtype: the activation forward, rfftn of the prediction and of the (dense) target, irfftn of a
    gradient spectrum and the activation backward (softmax; the activation alone for the complex
    spectrum with one band, `transforms_needed`). The transforms run in the torch backend's chunks
    of the batch (on a CPU, whole-batch irfftn ran 1.6x slower than per element at 2x4x64^3).
    Nothing else: no statistics, no labels, no per-bin values; the loss cannot be computed in
    less than this with torch's FFT."""
    options = MODES[mode]
    logits, labels = make_inputs(shape, dtype, device)
    logits = logits.to(compute_dtype(dtype))
    target = torch.nn.functional.one_hot(labels, shape[1]).movedim(-1, 1).to(logits.dtype)
    spatial, dims = shape[2:], tuple(range(2, len(shape)))
    transforms = transforms_needed(options)

    bins = shape[1] * math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1)
    chunks = torch_backend._chunks(shape[0], bins, device)  # the batch as the backend transforms it

    def step() -> None:
        p = torch.softmax(logits, 1)
        grad = p
        if transforms:
            grad = torch.empty_like(p)
            for chunk in chunks:
                spectrum = torch.fft.rfftn(p[chunk], dim=dims, norm="ortho")
                torch.fft.rfftn(target[chunk], dim=dims, norm="ortho")
                torch.fft.irfftn(spectrum, s=spatial, dim=dims, norm="ortho", out=grad[chunk])
        torch._softmax_backward_data(grad, p, 1, p.dtype)

    return step


def run(
    backend_names,
    device: torch.device,
    shapes,
    modes=tuple(MODES),
    dtype=torch.float32,
    repeats=10,
    memory=True,
    floors: Floors | None = None,
    progress=print,
    measured_floor: bool = False,
) -> list[Row]:
    """One row per backend, the reference first, for every shape and mode; the backends (forward,
    and forward+backward) and, with `measured_floor`, the `transform_floor` are timed side by side
    (`timing.interleaved_quantiles_ms`)."""
    rows = []
    for shape in shapes:
        for mode in modes:
            logits, labels = make_inputs(shape, dtype, device)
            reference_time = None
            names = ["reference", *backend_names]
            steps = [step for name in names for step in _loss_steps(logits, labels, name, MODES[mode])]
            if measured_floor:
                steps.append(transform_floor(mode, shape, dtype, device))
            times = interleaved_quantiles_ms(steps, device, repeats)
            floor = floors.forward_backward_ms(mode, shape, dtype) if floors else None
            if measured_floor:
                floor = times[-1][1]
            for index, name in enumerate(names):
                fwd, fwd_bwd = times[2 * index], times[2 * index + 1]
                reference_time = reference_time or fwd_bwd[1]
                row = Row(
                    backend=name,
                    mode=mode,
                    shape="x".join(map(str, shape)),
                    dtype=str(dtype)[6:],
                    forward_ms=fwd[1],
                    forward_p20_ms=fwd[0],
                    forward_p80_ms=fwd[2],
                    forward_backward_ms=fwd_bwd[1],
                    forward_backward_p20_ms=fwd_bwd[0],
                    forward_backward_p80_ms=fwd_bwd[2],
                    peak_extra_mib=peak_extra_mib(name, mode, shape, dtype, device) if memory else None,
                    speedup=reference_time / fwd_bwd[1],
                    floor_ms=floor,
                )
                rows.append(row)
                progress(format_row(row))
    return rows


HEADER = (
    f"{'backend':<10} {'mode':<17} {'shape':<17} {'dtype':<8} {'fwd ms':>9} {'p20-p80':>15} "
    f"{'fwd+bwd ms':>11} {'p20-p80':>15} {'peak MiB':>9} {'speed-up':>9} {'floor ms':>9} {'x floor':>8}"
)


def format_row(row: Row) -> str:
    """The medians, each followed by its 20th-80th percentile range."""
    peak = "-" if row.peak_extra_mib is None else f"{row.peak_extra_mib:.1f}"
    floor = "-" if row.floor_ms is None else f"{row.floor_ms:.3f}"
    multiple = "-" if row.floor_ms is None else f"{row.forward_backward_ms / row.floor_ms:.2f}x"
    forward_range = f"{row.forward_p20_ms:.2f}-{row.forward_p80_ms:.2f}"
    forward_backward_range = f"{row.forward_backward_p20_ms:.2f}-{row.forward_backward_p80_ms:.2f}"
    return (
        f"{row.backend:<10} {row.mode:<17} {row.shape:<17} {row.dtype:<8} {row.forward_ms:>9.2f} "
        f"{forward_range:>15} {row.forward_backward_ms:>11.2f} {forward_backward_range:>15} {peak:>9} "
        f"{row.speedup:>8.1f}x {floor:>9} {multiple:>8}"
    )


def write_csv(rows: list[Row], path: str) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(Row)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def write_png(rows: list[Row], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.shape, r.mode) for r in rows}, key=lambda g: (g[0], g[1]))
    names = list(dict.fromkeys(r.backend for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        found = [next((r for r in rows if (r.shape, r.mode) == g and r.backend == name), None) for g in groups]
        times = [0 if r is None else r.forward_backward_ms for r in found]
        spread = [  # whiskers: the 20th to 80th percentile
            [0 if r is None else r.forward_backward_ms - r.forward_backward_p20_ms for r in found],
            [0 if r is None else r.forward_backward_p80_ms - r.forward_backward_ms for r in found],
        ]
        ax.bar([j + i * width for j in range(len(groups))], times, width, yerr=spread, capsize=2, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{m}\n{s}" for s, m in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("forward+backward, ms (median, p20-p80)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
