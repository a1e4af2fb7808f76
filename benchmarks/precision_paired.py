"""The torch backend's CPU kernels against its pure-torch paths, case by case, on
precision_sweep.py's cases: how often the kernels' error is at or below pure torch's, the medians
and the worst, as fractions of SPEC §4's tolerance (a worst case alone says little: both paths
carry the float32 FFT's rounding, and which lands closer varies seed by seed).

    python -m scc_kernels build-cpu && python benchmarks/precision_paired.py --seeds 20
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before scc_kernels imports triton

from precision_sweep import MEDIUM, REGIMES, SETTINGS, SMALL

from scc_kernels.backends import _cpu_kernels
from scc_kernels.verify import compare_with_reference, make_problem


def _errors(logits: torch.Tensor, target: torch.Tensor, kernels: bool, options: dict) -> tuple[float, float]:
    if kernels:
        os.environ.pop(_cpu_kernels.SWITCH, None)
    else:
        os.environ[_cpu_kernels.SWITCH] = "0"
    try:
        errors = compare_with_reference("torch", logits, target, **options)
    finally:
        os.environ.pop(_cpu_kernels.SWITCH, None)
    return errors.loss, errors.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    if not _cpu_kernels.available():
        raise SystemExit(f"the CPU kernels are not in use here: {_cpu_kernels.status()}")
    cases = collections.defaultdict(list)  # (regime, spectra) → [(kernels, torch) loss, (kernels, torch) grad]
    start = time.perf_counter()
    for regime in [r for r in REGIMES if not r.startswith("huge")]:  # the huge regimes: worst cases only
        for spectrum, bands in SETTINGS:
            options = dict(spectrum=spectrum, bands=bands, softmax=True)
            kind = "complex 1" if (spectrum, bands) == ("complex", None) else "other"
            for spatial in SMALL + MEDIUM:
                for seed in range(args.seeds):
                    generator = torch.Generator().manual_seed(seed)
                    logits, target = make_problem(
                        regime, 2, 3, spatial, options, dtype=torch.float32, device=torch.device("cpu"),
                        generator=generator,
                    )  # fmt: skip
                    kernels, plain = (_errors(logits, target, on, options) for on in (True, False))
                    cases[regime, kind].append((kernels[0], plain[0], kernels[1], plain[1]))
    when = time.strftime("%Y-%m-%d")
    print(f"{when}, torch {torch.__version__}; {args.seeds} seeds; kernels (k) against pure torch (t)")
    print(f"{'regime':<13} {'spectra':<10} {'cases':>5} | loss: worst k / t, median k / t, k <= t | gradient: the same")
    for (regime, kind), rows in cases.items():
        k_loss, t_loss, k_grad, t_grad = zip(*rows)
        parts = []
        for k, t in ((k_loss, t_loss), (k_grad, t_grad)):
            at_or_below = sum(a <= b for a, b in zip(k, t)) / len(k)
            medians = f"{statistics.median(k):.2e} / {statistics.median(t):.2e}"
            parts.append(f"{max(k):.3f} / {max(t):.3f}, {medians}, {at_or_below:.0%}")
        print(f"{regime:<13} {kind:<10} {len(rows):>5} | {parts[0]} | {parts[1]}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
