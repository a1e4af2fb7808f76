"""SPEC §4 precision sweep: the worst errors of every backend next to the plain float32 reference.

    python benchmarks/precision_sweep.py                      # backends that run here, 5 seeds
    python benchmarks/precision_sweep.py --backend torch --seeds 12 --large

For each regime (random logits, near-converged predictions at confidence 4 to 10, huge inputs
without activation) it runs every spectrum/band setting on odd 1D-3D shapes and reports the
worst loss and gradient error as fractions of SPEC §4's tolerance (≤ 1 passes), the plain
float32 reference ("ref f32", not required to pass) on the same inputs, and how many cases
returned NaN because a float32 sum overflows (allowed). Triton's interpreter (CPU) gets the
small shapes only; `--large` adds 512² and 96³ for the other backends.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before scc_kernels imports triton

from scc_kernels.backends.registry import info, unavailable_reason
from scc_kernels.verify import compare_with_reference, make_problem

REGIMES = ["random", "converged 4", "converged 6", "converged 8", "converged 10", "huge 1e15", "huge 1e30"]
SETTINGS = [("complex", None), ("amplitude", None), ("amplitude", 4), ("complex", 24), ("amplitude", 64)]
SMALL = [(61,), (11,), (19, 17), (9, 10, 11)]
MEDIUM = [(63, 65), (45, 47), (128, 96), (20, 18, 22)]
LARGE = [(512, 512), (96, 96, 96)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", help="only this backend (repeatable)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--large", action="store_true", help="also 512x512 and 96x96x96 (not for triton on a CPU)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = args.backend or [n for n in info() if n != "reference" and unavailable_reason(n, device) is None]
    print(
        f"{time.strftime('%Y-%m-%d')} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
        f"torch {torch.__version__}; {args.seeds} seeds; errors as fractions of SPEC §4's tolerance"
    )
    worst = collections.defaultdict(lambda: [0.0, 0.0, 0, 0])  # (backend, regime) → loss, grad, cases, NaN
    start = time.perf_counter()
    for name in [*names, "reference"]:
        interpreted = name == "triton" and device.type == "cpu"
        shapes = SMALL + ([] if interpreted else MEDIUM + (LARGE if args.large else []))
        for regime in REGIMES:
            for spectrum, bands in SETTINGS:
                options = dict(spectrum=spectrum, bands=bands)
                if not regime.startswith("huge"):
                    options["softmax"] = True
                for spatial in shapes:
                    for seed in range(args.seeds):
                        generator = torch.Generator().manual_seed(seed)
                        logits, target = make_problem(
                            regime, 2, 3, spatial, options, dtype=torch.float32, device=device, generator=generator
                        )
                        errors = compare_with_reference(name, logits, target, **options)
                        entry = worst[name, regime]
                        entry[2] += 1
                        if errors.overflow:
                            entry[3] += 1
                            continue
                        entry[0] = max(entry[0], errors.loss) if not math.isnan(errors.loss) else math.inf
                        entry[1] = max(entry[1], errors.grad) if not math.isnan(errors.grad) else math.inf
    print(f"{'backend':<10} {'regime':<14} {'cases':>6} {'NaN':>5} {'loss/tol':>9} {'grad/tol':>9}")
    for (name, regime), (loss, grad, cases, nans) in worst.items():
        label = "ref f32" if name == "reference" else name
        print(f"{label:<10} {regime:<14} {cases:>6} {nans:>5} {loss:>9.2e} {grad:>9.2e}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
