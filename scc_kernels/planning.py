"""Which backend and path run a call (`resolve`, the one decision), and `plan`, the pick for a shape on a GPU.

    chosen = scc_kernels.plan((2, 4, 128, 128, 128), spectrum="amplitude", gpu="H200")
    print(chosen)              # the candidates, their modeled times and roofline terms, the pick
    chosen.backend, chosen.path

The paths are registry.PATHS. `plan` ranks the candidates of cost_model by modeled time, among
those that can run here and, with `deterministic`, those without order-dependent float32
atomics; with autotuning (`SCC_KERNELS_AUTOTUNE=1`, or `plan(..., autotune=True)`) by the
times autotune.py measures instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.autograd import forward_ad

from . import cost_model
from ._options import SCCOptions, assume_constant_result, make_options, warn_caller_once
from .autotune import candidate_key
from .autotune import measure as autotune_measure
from .backends import _cpu_kernels, dft_tiles, torch_backend
from .backends.registry import NAMES, supports_dtype, unavailable_reason
from .cost_model import PROFILES, Candidate, Plan, Workload, dominant_term, profile_name, profile_of


class Route(NamedTuple):
    """The backend and its path (registry.PATHS) that compute one call."""

    backend: str
    path: str


def resolve(name: str, input: torch.Tensor, opts: SCCOptions) -> Route:
    """The backend and path for `input` (prepared) and `opts`: decided here, once per call.

    name: "auto" ($SCC_KERNELS_BACKEND, else the plan's pick for this shape on a GPU, the torch
    backend on a CPU) or a backend, which raises RuntimeError saying why when it cannot run
    (SPEC §5). The reference computes what the fast backends' op cannot (forward-mode AD and
    torch.func transforms: with a warning). Slices of a few bins take the torch backend's
    float64 path (torch_backend.TINY_BINS says why), whatever the backend.
    """
    backend = _checked_backend(name, input.device, input.dtype)
    if backend != "reference" and (mode := _mode_only_the_reference_supports(input)) is not None:
        warn_caller_once(
            f"scc_kernels: backend {backend!r} does not support {mode}; the reference backend computes "
            "these losses instead (same values, slower). Pass backend='reference' to silence this."
        )
        backend = "reference"
    parseval = opts.spectrum == "complex" and opts.num_bands == 1
    if backend == "reference":
        return Route("reference", "fft")
    if not parseval and torch_backend.is_tiny(tuple(input.shape[2:])):
        return Route("torch", "tiny")
    if backend == "auto" and input.is_cuda and input.numel() > 0:
        # sizes as ints: under torch.compile this guards the graph on the shape the plan was made for
        shape = tuple(int(size) for size in input.shape)
        return Route(*_planned(shape, opts.spectrum, opts.num_bands, input.dtype, opts.include_background))
    if backend == "auto":  # a CPU graph stays shape-generic
        backend = "torch"
    fused = backend == "torch" and _cpu_kernels_apply(input)
    if parseval:
        return Route(backend, "fused-parseval" if fused else "parseval")
    if backend == "triton":
        return Route(backend, _triton_path(input, opts))
    if fused and opts.spectrum == "amplitude":
        return Route(backend, "fused")
    return Route(backend, "fft")


def _cpu_kernels_apply(input: torch.Tensor) -> bool:
    """The torch backend's CPU kernels (paths "fused" and "fused-parseval"): float32 on a CPU,
    where they are built (_cpu_kernels: only on request, never by a loss call)."""
    computed_in_float32 = input.dtype in (torch.float32, torch.float16, torch.bfloat16)
    return input.device.type == "cpu" and computed_in_float32 and _cpu_kernels_built()


@assume_constant_result  # decided once when torch.compile traces
def _cpu_kernels_built() -> bool:
    return _cpu_kernels.available()


@assume_constant_result  # decided once when torch.compile traces, not per step
def _checked_backend(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """`name`, or for "auto" $SCC_KERNELS_BACKEND if set; a named backend checked to run here."""
    if name == "auto":
        name = os.environ.get("SCC_KERNELS_BACKEND", "auto") or "auto"
    if name == "auto":
        return name
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r} (from SCC_KERNELS_BACKEND?)")
    if supports_dtype(name, dtype):
        reason = unavailable_reason(name, device)
    else:
        supporting = [other for other in NAMES if supports_dtype(other, dtype)]
        reason = f"{dtype} inputs are supported by the {' and '.join(supporting)} backends only"
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device}: {reason}")
    return name


@assume_constant_result
def _planned(
    shape: tuple[int, ...], spectrum: str, bands: int, dtype: torch.dtype, include_background: bool
) -> tuple[str, str]:
    """(backend, path): `plan`'s pick for this problem on the current CUDA device."""
    chosen = cached_plan(
        shape,
        spectrum=spectrum,
        bands=bands,
        dtype=dtype,
        include_background=include_background,
        deterministic=torch.are_deterministic_algorithms_enabled(),
        autotune=_autotune_asked(),
    )
    return chosen.backend, chosen.path


def _triton_path(input: torch.Tensor, opts: SCCOptions) -> str:
    """ "dft" or "fft" for the triton backend: the FFT where the DFT kernels do not reach
    (dft_tiles.supported); on a GPU the plan's choice between the two (measured, with
    autotuning; deterministic mode leaves out the DFT's atomics); in Triton's interpreter, where
    there is no GPU to model and atomics run in order, the DFT, so that the tests exercise both."""
    if not dft_tiles.supported(tuple(input.shape[2:])):
        return "fft"
    if not input.is_cuda:
        return "dft"
    # sizes as ints: the graph is guarded on them, so a shape the plan sends down the other path
    # (whose forward saves other tensors) is traced anew
    shape = tuple(int(size) for size in input.shape)
    return triton_path(shape, opts.spectrum, opts.num_bands, input.dtype, opts.include_background, input.device)


@assume_constant_result
def triton_path(
    shape: tuple[int, ...],
    spectrum: str,
    bands: int,
    dtype: torch.dtype,
    include_background: bool,
    device: torch.device,
) -> str:
    """The plan's choice between the triton backend's "dft" and "fft" on a CUDA device."""
    return _triton_path_of(
        shape,
        spectrum,
        bands,
        dtype,
        include_background,
        device,
        torch.are_deterministic_algorithms_enabled(),
        _autotune_asked(),
    )


@functools.lru_cache(maxsize=256)
def _triton_path_of(
    shape: tuple[int, ...],
    spectrum: str,
    bands: int,
    dtype: torch.dtype,
    include_background: bool,
    device: torch.device,
    deterministic: bool,
    autotune: bool,
) -> str:
    workload = Workload(shape, spectrum, bands, dtype, include_background)
    profile = PROFILES.get(profile_name(device) or "") or profile_of(device)
    triton = [
        c for c in cost_model.candidates(workload, profile) if c.backend == "triton" and allowed(c, deterministic)
    ]
    if autotune:
        measured = autotune_measure(workload, triton, device)
        return min(triton, key=lambda c: measured[candidate_key(c)]).path
    return min(triton, key=lambda c: c.modeled_ms).path


def _autotune_asked() -> bool:
    return os.environ.get("SCC_KERNELS_AUTOTUNE") == "1"


def _mode_only_the_reference_supports(input: torch.Tensor) -> str | None:
    """The autograd mode in use that the fast backends' custom op has no rule for (SPEC §4):
    forward mode, or a torch.func transform. Reverse mode, the common case, gives None."""
    if torch.compiler.is_compiling():  # dynamo traces neither of these
        return None
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "torch.func transforms (grad, vmap, jvp, jacrev, hessian, ...)"
    if forward_ad.unpack_dual(input).tangent is not None:  # type: ignore[no-untyped-call]  # torch: no annotations
        return "forward-mode AD (torch.autograd.forward_ad)"
    return None


def allowed(c: Candidate, deterministic: bool) -> bool:
    """A fast path that may run: deterministic mode leaves out the ones with atomics."""
    return c.backend != "reference" and not (deterministic and c.atomics)


def plan(
    input_shape: Sequence[int],
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
    workload = Workload(shape, spectrum, options.num_bands, _checked_dtype(dtype), include_background)
    if gpu is not None and gpu not in PROFILES:
        raise ValueError(f"gpu must be one of {tuple(PROFILES)} or None (the current device), got {gpu!r}")
    if gpu is None and not torch.cuda.is_available():
        raise RuntimeError("plan(gpu=None) needs a CUDA device; name a profile (gpu='H200') to model one")
    profile = PROFILES[gpu] if gpu is not None else profile_of()
    deterministic = deterministic or torch.are_deterministic_algorithms_enabled()
    candidates = sorted(cost_model.candidates(workload, profile), key=lambda c: c.modeled_ms)
    eligible = [c for c in candidates if allowed(c, deterministic) and supports_dtype(c.backend, dtype)]
    if gpu is None:
        eligible = [c for c in eligible if _runs_here(c.backend, dtype)]
    if autotune is None:
        autotune = gpu is None and _autotune_asked()
    if autotune:
        if gpu is not None:
            raise ValueError("autotune measures the current device: use gpu=None")
        measured = autotune_measure(workload, eligible)
        candidates = [dataclasses.replace(c, measured_ms=measured.get(candidate_key(c))) for c in candidates]
        # only the eligible ones were timed: the pick is among them, whatever else is listed
        timed = set(map(candidate_key, eligible))
        best = min((c for c in candidates if candidate_key(c) in timed), key=lambda c: measured[candidate_key(c)])
        reason = f"fastest measured ({best.measured_ms:.3f} ms; the model said {best.modeled_ms:.3f} ms)"
    else:
        best = eligible[0]
        second = next((c for c in eligible[1:]), None)
        reason = f"lowest modeled time ({dominant_term(best)}-bound)" + (
            f", {second.modeled_ms / best.modeled_ms:.1f}x ahead of {second.backend}/{second.path}" if second else ""
        )
    return Plan(best.backend, best.path, reason, profile, workload, tuple(candidates))


cached_plan = functools.lru_cache(maxsize=256)(plan)  # backend="auto" asks once per problem


def _checked_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
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


def _checked_dtype(dtype: object) -> torch.dtype:
    """A floating torch.dtype, as scc_loss's input must be (SPEC §5: TypeError otherwise)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (torch.float32, ...), got {dtype!r}")
    return dtype


def _runs_here(backend: str, dtype: torch.dtype) -> bool:
    """Can run on the current CUDA device now: the cuda backend only prebuilt (auto must not start
    a minute-long JIT compile that nobody asked for; backend="cuda" still may)."""
    if not supports_dtype(backend, dtype) or unavailable_reason(backend, "cuda") is not None:
        return False
    if backend != "cuda":
        return True
    from .backends import _cuda_build  # here, not at the top: importing scc_kernels loads no backend's code

    return _cuda_build.build_status() == "prebuilt"
