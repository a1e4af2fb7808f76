"""Smoke check for gpu_check.sh: each fast backend once on each headline problem, loss values and
gradients against the float64 reference, as fractions of SPEC §4's tolerance (≤ 1 passes;
scc_kernels.verify.compare_with_reference computes them).

    python benchmarks/gpu_smoke.py [--quick] [--skip cuda] [--dtype float32 bfloat16]

On a CPU-only machine the triton backend runs in Triton's interpreter (set here, before triton
is imported) and --quick shrinks the problems (the interpreter would take hours on the headline
sizes). Prints one line per check and a last line with the worst fractions; exit status 1 if a
check fails or raises.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before scc_kernels imports triton

from scc_kernels.backends.registry import FAST_BACKENDS, unavailable_reason
from scc_kernels.verify import compare_with_reference, random_problem

# the headline problems (README, bench.SHAPES["cuda"]) with the options each is the headline of
PROBLEMS = [
    ((16, 4, 512, 512), dict(spectrum="complex", softmax=True, ignore_index=255)),
    ((16, 4, 256, 256), dict(spectrum="amplitude", softmax=True)),
    ((2, 4, 128, 128, 128), dict(spectrum="amplitude", softmax=True, bands=4)),
]
QUICK_SHAPES = [(2, 4, 24, 23), (1, 4, 17, 16), (1, 4, 6, 5, 4)]  # the same options, small and odd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problems (CPU, interpreter)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(FAST_BACKENDS), help="backends left out")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [n for n in FAST_BACKENDS if n not in args.skip and unavailable_reason(n, device) is None]
    problems = [(q, o) for q, (_, o) in zip(QUICK_SHAPES, PROBLEMS)] if args.quick else PROBLEMS
    print(f"smoke on {device}: backends {', '.join(names)}; errors as fractions of SPEC §4's tolerance")
    worst_loss = worst_grad = 0.0
    failures = 0
    for dtype in (getattr(torch, d) for d in args.dtype):
        for shape, options in problems:
            generator = torch.Generator().manual_seed(0)
            logits, target = random_problem(
                shape[0],
                shape[1],
                shape[2:],
                ignore_index=options.get("ignore_index"),
                dtype=dtype,
                device=device,
                generator=generator,
            )
            case = f"{str(dtype)[6:]} {'x'.join(map(str, shape))} " + " ".join(f"{k}={v}" for k, v in options.items())
            for name in names:
                start = time.perf_counter()
                try:
                    errors = compare_with_reference(name, logits, target, **options)
                except Exception as error:  # reported, and the step fails; the other checks still run
                    failures += 1
                    print(f"{name:<8} {case}: FAIL {type(error).__name__}: {error}", flush=True)
                    continue
                seconds = time.perf_counter() - start
                result = "ok" if errors.ok else "FAIL"
                failures += not errors.ok
                worst_loss = max(worst_loss, errors.loss) if errors.loss == errors.loss else float("nan")
                worst_grad = max(worst_grad, errors.grad) if errors.grad == errors.grad else float("nan")
                print(
                    f"{name:<8} {case}: loss/tol {errors.loss:.2e} grad/tol {errors.grad:.2e} {result} "
                    f"({seconds:.1f} s with the reference)",
                    flush=True,
                )
    print(f"smoke: {failures} failed; worst loss/tol {worst_loss:.2e}, grad/tol {worst_grad:.2e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
