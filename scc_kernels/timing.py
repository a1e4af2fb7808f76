"""How long a call takes on a device: the one timer of `bench` and of autotuning.

On a GPU where triton runs compiled, `triton.testing.do_bench` (L2 flushed before every call);
otherwise CUDA events, or wall time on a CPU. Warm-up calls (compilation) are never counted.
"""

from __future__ import annotations

import math
import time

import torch

QUANTILES = (0.2, 0.5, 0.8)  # reported: the median and the range of the middle 60% of the runs


def timer(device: torch.device):
    """measure(fn) -> ms of one call of fn: CUDA events on a GPU, wall time on a CPU."""
    if device.type == "cuda":

        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:

        def measure(fn):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3

    return measure


def time_quantiles_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    """The QUANTILES (20th, 50th, 80th percentile) of the time of one call of `fn` in ms, after
    `warmup` untimed calls (compilation never counts).

    On a GPU, where triton runs compiled: `triton.testing.do_bench`, which flushes the L2 cache
    before every call and runs for a time, not a count: 100 ms of calls, or `repeats` calls if they
    take longer. Otherwise `timer`'s measurements of `repeats` calls.
    """
    measure = timer(device)
    for _ in range(warmup):
        fn()
    do_bench = _compiled_do_bench() if device.type == "cuda" else None
    if do_bench is not None:
        call_ms = measure(fn)
        return tuple(do_bench(fn, rep=max(100.0, repeats * call_ms), quantiles=list(QUANTILES)))
    return _quantiles([measure(fn) for _ in range(repeats)])


def interleaved_quantiles_ms(
    fns: list, device: torch.device, repeats: int, warmup: int = 2
) -> list[tuple[float, float, float]]:
    """`time_quantiles_ms` of each of `fns`, measured side by side: on a CPU one call of each in
    turn (A B C A B C ...), so that a load that comes and goes (a shared machine) weighs on all of
    them alike; on a GPU one after the other (do_bench's runs are short and the device is ours)."""
    if device.type == "cuda":
        return [time_quantiles_ms(fn, device, repeats, warmup) for fn in fns]
    measure = timer(device)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, measured in zip(fns, times):
            measured.append(measure(fn))
    return [_quantiles(measured) for measured in times]


def time_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """The median of `time_quantiles_ms`."""
    return time_quantiles_ms(fn, device, repeats, warmup)[1]


def timing_method(device: torch.device, repeats: int) -> str:
    """How `time_quantiles_ms` times on `device`, for a printed header."""
    if device.type == "cuda" and _compiled_do_bench() is not None:
        return f"triton.testing.do_bench (L2 flushed; 100 ms of runs, or {repeats} runs if longer)"
    return f"{repeats} runs"


def _compiled_do_bench():
    """triton.testing.do_bench, or None where triton is missing or runs in its interpreter (the
    one decision of that: triton_backend.INTERPRETED)."""
    try:
        from triton.testing import do_bench

        from .backends.triton_backend import INTERPRETED
    except ImportError:
        return None
    return None if INTERPRETED else do_bench


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    """QUANTILES of `times`, interpolated linearly between the sorted values (as do_bench does)."""
    ordered = sorted(times)
    result = []
    for q in QUANTILES:
        point = q * (len(ordered) - 1)
        low = math.floor(point)
        high = min(low + 1, len(ordered) - 1)
        result.append(ordered[low] + (point - low) * (ordered[high] - ordered[low]))
    q20, median, q80 = result
    return q20, median, q80
