"""Autotuning: each candidate (backend, path) of a problem timed once on the current device.

The fastest is cached in this process and in a JSON file (`$SCC_KERNELS_CACHE`, default
~/.cache/scc_kernels/autotune.json), keyed by device name, torch and triton versions, the problem
and the candidate set (so deterministic mode, or a dtype some paths cannot run, has its own
entries). The file is an optimisation: one that cannot be read, written or understood gives a
warning (once) and autotuning goes on without it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import TypeGuard

import torch

from ._options import make_options, warn_caller_once
from ._stats import loss_from_stats
from .backends.registry import Problem
from .cost_model import Candidate, Workload
from .ops import spectral_stats
from .timing import time_ms

_measured: dict[str, dict[str, float]] = {}


def candidate_key(c: Candidate) -> str:
    return f"{c.backend}/{c.path}"


def _cache_path() -> str:
    return os.environ.get(
        "SCC_KERNELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "scc_kernels", "autotune.json")
    )


def _signature(workload: Workload, device: torch.device, candidates: list[Candidate]) -> str:
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
            list(workload.shape),
            workload.spectrum,
            workload.bands,
            str(workload.dtype),
            workload.include_background,
            sorted(map(candidate_key, candidates)),
        ]
    )


def measure(workload: Workload, candidates: list[Candidate], device: torch.device | None = None) -> dict[str, float]:
    """{"backend/path": fwd+bwd ms} for exactly `candidates`, measured on `device` (default: the
    current CUDA device), from the process cache, the disk cache, or by timing each candidate
    (median of 5). The disk cache is an optimisation: whatever it holds, or wherever it is, a
    bad one gives a warning and the timings are measured again, never an error."""
    device = device or torch.device("cuda")
    key = _signature(workload, device, candidates)
    if key not in _measured:
        disk = _read_cache()
        entry = disk.get(key) if disk is not None else None
        if _valid_entry(entry, candidates):
            _measured[key] = entry
        else:
            _measured[key] = {candidate_key(c): _time_candidate(workload, c, device) for c in candidates}
            if disk is not None:
                disk[key] = _measured[key]
                _write_cache(disk)
    return _measured[key]


def _valid_entry(entry: object, candidates: list[Candidate]) -> TypeGuard[dict[str, float]]:
    """A time in ms for every candidate, and nothing else."""
    return (
        isinstance(entry, dict)
        and set(entry) == set(map(candidate_key, candidates))
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


def _time_candidate(workload: Workload, c: Candidate, device: torch.device, repeats: int = 5) -> float:
    """fwd+bwd ms of the candidate's backend and path on softmax logits and a label map: the op
    and the loss from its statistics (what varies between candidates; the argument checks and
    target preparation around them are the same for all)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(workload.shape, generator=generator).to(device=device, dtype=workload.dtype)
    logits.requires_grad_(True)
    labels = torch.randint(0, workload.shape[1], (workload.shape[0], *workload.shape[2:]), generator=generator)
    labels = labels.to(device)
    opts = make_options(spectrum=workload.spectrum, bands=workload.bands, softmax=True)
    problem = Problem(workload.spectrum, workload.bands, "softmax", None, workload.include_background, c.path)

    def step():
        stats, *_ = spectral_stats(logits, labels, c.backend, problem)
        loss_from_stats(stats, opts).mean().backward()

    return time_ms(step, device, repeats, warmup=1)  # the first call compiles and warms up
