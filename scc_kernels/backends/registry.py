"""The backends: one record each, from which every list of names, the dtypes each runs and the
install hints are derived; `load` imports a backend's module, which follows `BackendModule`.

The decision of which backend and path run a call is scc_kernels.planning.resolve's, made once.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Protocol, cast

import torch

# How a fast backend computes a problem, chosen by planning.resolve (cost_model.Candidate holds each
# path's cost, and whether it uses order-dependent atomics):
PATHS = {
    "parseval": "complex spectrum, one band: one pass over the data, no transform (SPEC §3)",
    "fft": "rfftn of the signals, band statistics over the half spectrum, irfftn in the backward",
    "dft": "Triton's DFT-as-matmul kernels, fused end to end, no spectrum in memory (2D, 3D; dft_tiles)",
    "fused": "the fft path with the amplitude's per-bin work in compiled CPU kernels (float32; built on request)",
    "fused-parseval": "the parseval path with a label map's sums and gradient in the same CPU kernels",
    "tiny": "the fft path in float64, for slices of at most torch_backend.TINY_BINS half-spectrum bins",
}
_HALF_AND_SINGLE = frozenset({torch.float16, torch.bfloat16, torch.float32})


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a fast backend needs to know besides the two tensors: the op's static arguments.

    The target is an integer label map `(B, *S)` when `target.dim() == input.dim() - 1`,
    else a float tensor shaped like `input`. Output channels are `offset:C`. `path` is the one
    planning.resolve chose, from the backend's `paths`.
    """

    spectrum: str
    num_bands: int
    activation: str
    ignore_index: int | None
    include_background: bool
    path: str

    @property
    def offset(self) -> int:
        return 0 if self.include_background else 1

    @property
    def parseval(self) -> bool:
        """Complex spectrum, one band: SPEC's transform-free closed form (one pass, no transform)."""
        return self.path in ("parseval", "fused-parseval")


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    install_hint: str  # what to install when its module cannot be imported
    dtypes: frozenset[torch.dtype]  # the input dtypes it computes
    devices: tuple[str, ...] | None  # the device types it can run on (None: any torch runs on)
    paths: tuple[str, ...]  # the paths it runs (PATHS)
    fast: bool = True  # runs as the custom op (everything but the reference)


BACKENDS = (
    Backend("reference", "pip install scc_kernels", _HALF_AND_SINGLE | {torch.float64}, None, ("fft",), fast=False),
    # the fast ones in the order `info` and `bench` list them
    Backend(
        "triton",
        "pip install 'scc_kernels[triton]'",
        _HALF_AND_SINGLE,
        ("cuda", "cpu"),  # cpu: Triton's interpreter, TRITON_INTERPRET=1
        ("parseval", "dft", "fft"),
    ),
    Backend(
        "cuda",
        "SCC_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation . (or let it JIT-compile: needs nvcc and ninja)",
        _HALF_AND_SINGLE,
        ("cuda",),
        ("parseval", "fft"),
    ),
    Backend(
        "cupy",
        "pip install cupy-cuda12x or cupy-cuda13x (the wheel matching your CUDA)",
        _HALF_AND_SINGLE,
        ("cuda",),
        ("parseval", "fft"),
    ),
    Backend(
        "torch",
        "pip install scc_kernels",
        _HALF_AND_SINGLE | {torch.float64},
        None,
        ("parseval", "fft", "fused", "fused-parseval", "tiny"),
    ),
)
BY_NAME = {backend.name: backend for backend in BACKENDS}
NAMES = tuple(BY_NAME)
FAST_BACKENDS = tuple(backend.name for backend in BACKENDS if backend.fast)


class BackendModule(Protocol):
    """What a fast backend's module `scc_kernels.backends.<name>_backend` provides.

    `input` is the raw input (the backend applies `problem.activation`); `target` is prepared by
    _options.prepare (a dense float tensor, or an integer label map already checked). The
    statistics are centred per part and merged with _stats.merge (SPEC §4); the backward turns
    grad_stats into per-bin coefficients with _stats.gradient_coefficients.
    """

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why it cannot run on `device` (of a type its record lists), or None if it can."""

    def band_stats(self, input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
        """[stats (B, C', K, 8) in _stats.STATS order, *tensors its backward needs]."""

    def band_stats_fake(self, input: torch.Tensor, target: torch.Tensor, problem: Problem) -> list[torch.Tensor]:
        """The same list as empty tensors (torch.compile's fake implementation)."""

    def band_stats_backward(
        self,
        grad_stats: torch.Tensor,
        stats: torch.Tensor,
        input: torch.Tensor,
        target: torch.Tensor,
        saved: list[torch.Tensor],
        problem: Problem,
    ) -> torch.Tensor:
        """The gradient of `input`, in its dtype."""


def load(name: str) -> BackendModule:
    """The fast backend's module; ImportError when its dependency is missing."""
    return cast(BackendModule, importlib.import_module(f"scc_kernels.backends.{name}_backend"))


def supports_dtype(name: str, dtype: torch.dtype) -> bool:
    return dtype in BY_NAME[name].dtypes


def unavailable_reason(name: str, device: torch.device | str | None = None) -> str | None:
    """Why backend `name` cannot run on `device` (default: cuda if present, else cpu); None if it can."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    backend = BY_NAME[name]
    if backend.devices is not None and device.type not in backend.devices:
        return f"needs a {' or '.join(d.upper() for d in backend.devices)} device, got {device.type}"
    if not backend.fast:
        return None
    try:
        module = load(name)
    except ImportError as error:
        return f"{error}; install it with: {backend.install_hint}"
    return module.unavailable_reason(device)


def info() -> dict[str, str | None]:
    """For every backend, None if it can run here, else why not."""
    return {name: unavailable_reason(name) for name in NAMES}
