"""Two versions of scc_kernels' torch backend timed side by side in one process, with the reference
and the CPU floor (`bench.transform_floor`), interleaved in a shuffled order every round.

    python benchmarks/side_by_side_versions.py --old /path/to/old/checkout
    python benchmarks/side_by_side_versions.py --old ../main --problems 8x4x256x256:1 2x4x64x64x64:8 --rounds 31
    python benchmarks/side_by_side_versions.py --old ../main --problems 8x4x256x256:1 --rounds 7 --loop 10

The old checkout's `scc_kernels` is copied to a temporary folder as package `scc_old` (its custom ops
renamed `scc_old::`), so both versions load in this process and share its load, cache and clock:
on a shared machine, times taken in separate processes minutes apart differ by more than the
change being measured. One thread; softmax logits and an int64 label map, float32, fwd+bwd.
Prints the medians, each as a multiple of the floor's median and as the median of its per-round
multiples ("paired": each round's time over the floor's in the same round, so that a slow minute
of the machine, which moves both, cancels), and the speed-ups over the reference. Where
the new version's CPU kernels are built (`python -m scc_kernels build-cpu`), its torch backend
runs twice: on its "fused" path and, with the kernels switched off for the call, on its "fft" path.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before scc_kernels imports triton


def _load_old(tree: pathlib.Path, folder: pathlib.Path):
    target = folder / "scc_old"
    shutil.copytree(tree / "scc_kernels", target)
    shutil.copytree(tree / "csrc", folder / "csrc")  # next to the package, where a checkout has it
    for path in target.rglob("*.py"):
        path.write_text(path.read_text().replace("scc_kernels", "scc_old"))
    sys.path.insert(0, str(folder))
    import scc_old  # type: ignore[import-not-found]

    if (target / "backends" / "_cpu_kernels.py").is_file() and shutil.which("cc"):  # its CPU kernels, if it has them
        importlib.import_module("scc_old.backends._cpu_kernels").build()
    return scc_old


def _forward_backward(module, x: torch.Tensor, labels: torch.Tensor, options: dict, backend: str):
    def run() -> None:
        module.scc_loss(x, labels, backend=backend, **options).backward()
        x.grad = None

    return run


def _without_cpu_kernels(run):
    """`run` with the CPU kernels switched off (SCC_KERNELS_CPU_KERNELS=0) for the call."""

    def switched_off() -> None:
        os.environ["SCC_KERNELS_CPU_KERNELS"] = "0"
        try:
            run()
        finally:
            del os.environ["SCC_KERNELS_CPU_KERNELS"]

    return switched_off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=pathlib.Path, required=True, help="a checkout holding the old scc_kernels/")
    parser.add_argument("--problems", nargs="+", default=["8x4x256x256:1", "2x4x64x64x64:1", "8x4x256x256:4"])
    parser.add_argument("--spectrum", default="amplitude", choices=["amplitude", "complex"])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--loop",
        type=int,
        default=1,
        help="calls of each step in a row per round, timed together (> 1: the regime of a loop calling the "
        "loss alone, where each call's allocations meet the last call's frees; page faults per call shown)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    import scc_kernels
    from scc_kernels.backends import _cpu_kernels
    from scc_kernels.bench import make_inputs, transform_floor

    fused = _cpu_kernels.available()
    new = "new torch (fused)" if fused else "new torch"

    with tempfile.TemporaryDirectory() as folder:
        old = _load_old(args.old.resolve(), pathlib.Path(folder))
        print(
            f"{time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__}, 1 thread; old: {args.old}, "
            f"new: {pathlib.Path(scc_kernels.__file__).parent}; median of {args.rounds} shuffled rounds"
        )
        for problem in args.problems:
            text, _, bands_text = problem.partition(":")
            shape = tuple(int(size) for size in text.split("x"))
            bands = None if bands_text in ("", "1") else int(bands_text)
            logits, labels = make_inputs(shape, torch.float32, torch.device("cpu"))
            x = logits.clone().requires_grad_(True)

            options = dict(spectrum=args.spectrum, softmax=True, bands=bands)
            mode = "complex" if args.spectrum == "complex" and bands is None else "amplitude"
            steps = {
                "reference": _forward_backward(scc_kernels, x, labels, options, "reference"),
                "old torch": _forward_backward(old, x, labels, options, "torch"),
                new: _forward_backward(scc_kernels, x, labels, options, "torch"),
                "floor": transform_floor(mode, shape, torch.float32, torch.device("cpu")),
            }
            if fused:
                steps["new torch (fft)"] = _without_cpu_kernels(steps[new])
            for run in steps.values():
                run()
            times: dict[str, list[float]] = {name: [] for name in steps}
            faults: dict[str, list[float]] = {name: [] for name in steps}
            order, rng, loads = list(steps.items()), random.Random(0), []
            for _ in range(args.rounds):
                rng.shuffle(order)
                for name, run in order:
                    start, faulted = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    for _ in range(args.loop):
                        run()
                    times[name].append((time.perf_counter() - start) * 1e3 / args.loop)
                    faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted) / args.loop)
                loads.append(os.getloadavg()[0])
            median = {name: statistics.median(values) for name, values in times.items()}
            floor = median["floor"]
            paired = {  # each round's time over that round's floor, then the median: drift cancels
                name: statistics.median(ms / floor_ms for ms, floor_ms in zip(values, times["floor"]))
                for name, values in times.items()
            }
            print(
                f"{text} {args.spectrum}, {bands or 1} band(s): floor {floor:.1f} ms | "
                + " | ".join(
                    f"{name} {ms:.1f} ms = {ms / floor:.2f}x floor (paired {paired[name]:.2f}x)"
                    for name, ms in median.items()
                    if name != "floor"
                )
                + f" | speed-up over the reference: old {median['reference'] / median['old torch']:.2f}x, "
                f"new {median['reference'] / median[new]:.2f}x | load {min(loads):.1f}-{max(loads):.1f}"
                + (
                    " | page faults per call: "
                    + ", ".join(f"{name} {statistics.median(values):.0f}" for name, values in faults.items())
                    if args.loop > 1
                    else ""
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
