"""Where one forward+backward of the torch backend spends its time, step by step, next to its floor.

    python benchmarks/profile_torch_backend.py                          # 8x4x256x256 and 2x4x64x64x64
    python benchmarks/profile_torch_backend.py --shapes 8x4x256x256 --bands 4 --repeats 20

One thread (torch.set_num_threads(1)), softmax logits and an int64 label map, float32. The steps are
the `scc::` labels of backends/torch_backend.py (torch.profiler.record_function), their CPU time
per call inclusive of what runs inside them; "outside the backend" is the rest of the call (label
check, flat-target test, 1 - r, autograd). The floor (`bench.transform_floor`: softmax fwd+bwd,
rfftn of prediction and target, irfftn of the gradient) and the loss are then timed side by side,
interleaved, without the profiler; the top aten operators by self time follow.
"""

from __future__ import annotations

import argparse
import collections
import os
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before scc_kernels imports triton

from scc_kernels import scc_loss
from scc_kernels.bench import make_inputs, transform_floor
from scc_kernels.timing import interleaved_quantiles_ms


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(size) for size in text.lower().split("x"))


def profile(shape: tuple[int, ...], options: dict, repeats: int, top: int) -> None:
    logits, labels = make_inputs(shape, torch.float32, torch.device("cpu"))
    x = logits.clone().requires_grad_(True)

    def forward_backward() -> None:
        with torch.profiler.record_function("scc::forward (all)"):
            loss = scc_loss(x, labels, backend="torch", **options)
        with torch.profiler.record_function("scc::backward (all)"):
            loss.backward()
        x.grad = None

    for _ in range(3):
        forward_backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            forward_backward()
    events = prof.key_averages()
    steps = collections.OrderedDict()
    for event in events:
        if event.key.startswith("scc::"):
            steps[event.key] = event.cpu_time_total / 1e3 / repeats
    forward = steps.pop("scc::forward (all)", 0.0)
    backward = steps.pop("scc::backward (all)", 0.0)
    forward_steps = ["scc::activation", "scc::base choice", "scc::signals", "scc::rfftn", "scc::bin values"]
    forward_steps += ["scc::band stats", "scc::bin values and band stats (fused)"]
    print(f"  {'step':<34} {'ms/call':>8}   (under the profiler, {repeats} calls)")
    inside = 0.0
    for name in forward_steps:
        if name in steps:
            inside += steps[name]
            print(f"  fwd {name[5:]:<30} {steps.pop(name):>8.2f}")
    print(f"  fwd {'outside the backend':<30} {forward - inside:>8.2f}")
    inside = 0.0
    for name, ms in steps.items():
        inside += ms
        print(f"  bwd {name[5:]:<30} {ms:>8.2f}")
    print(f"  bwd {'outside the backend':<30} {backward - inside:>8.2f}")
    print(f"  {'total':<34} {forward + backward:>8.2f}")
    print(f"  top {top} aten operators by self CPU time, ms per call (calls per call):")
    aten = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
    for event in aten[:top]:
        print(f"    {event.key:<34} {event.self_cpu_time_total / 1e3 / repeats:>8.2f} ({event.count / repeats:g})")

    mode = "amplitude" if options.get("bands") is None else "amplitude-4bands"  # the floor is the same
    floor = transform_floor(mode, shape, torch.float32, torch.device("cpu"))
    times = interleaved_quantiles_ms([forward_backward, floor], torch.device("cpu"), repeats)
    loss_ms, floor_ms = (t[1] for t in times)
    print(f"  side by side, no profiler (median of {repeats}): loss fwd+bwd {loss_ms:.2f} ms, ", end="")
    print(f"floor {floor_ms:.2f} ms, {loss_ms / floor_ms:.2f}x the floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=_shape, default=[(8, 4, 256, 256), (2, 4, 64, 64, 64)])
    parser.add_argument("--bands", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__}, {threads} thread(s); load {os.getloadavg()}")
    for shape in args.shapes:
        for bands in args.bands:
            options = dict(spectrum="amplitude", softmax=True, bands=None if bands == 1 else bands)
            print(f"{'x'.join(map(str, shape))} amplitude, {bands} band(s), softmax, int64 labels, float32")
            profile(shape, options, args.repeats, args.top)


if __name__ == "__main__":
    main()
